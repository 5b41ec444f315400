"""Which ONNX or TFLite tensor is which PyTorch quantization point: found by value, not by name.

The optimisation (quant/optimise.py) chooses activation ranges per quantization point of the
PyTorch model (quant/simulation.py's names: `blocks.3.dw.bn`, `blocks.3.se.gate`, ...); the ONNX
quantizers want them per tensor of the graph they quantize, whose names the exporter makes up
(`silu_3`, `mul_12`) and whose BatchNorms are folded. Running both on the same images and pairing
every point with the graph tensors that hold the same values is exact, and survives any change in
the exporter's naming. A tensor no point matches keeps the recipe's range.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .simulation import _hook, quant_points

MATCH_TOLERANCE = 1e-3  # of the tensor's largest magnitude: float export noise is ~1e-6


def point_values(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Each quantization point's tensor on input `x`."""
    seen: dict[str, np.ndarray] = {}

    def keep(name, t):
        seen[name] = t.detach().numpy().copy()

    hooks = [_hook(module, where, lambda t, n=name: keep(n, t)) for name, (module, where, _)
             in quant_points(model).items()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def graph_values(graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor a node of the ONNX model computes, on input `x` (ONNX Runtime, CPU)."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(graph)
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                known.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: x})
    return {n: v for n, v in zip(names, values) if isinstance(v, np.ndarray) and v.dtype == np.float32}


def _match(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict[str, list[str]]:
    by_shape: dict[tuple, list[str]] = {}
    for name, value in theirs.items():
        by_shape.setdefault(tuple(value.shape), []).append(name)
    found = {}
    for point, value in ours.items():
        bound = MATCH_TOLERANCE * max(float(np.abs(value).max()), 1e-6)
        matches = [n for n in by_shape.get(tuple(value.shape), [])
                   if float(np.abs(theirs[n] - value).max()) <= bound]
        if matches:
            found[point] = matches
    return found


def onnx_tensors_for_points(model: nn.Module, graph, x: np.ndarray) -> dict[str, list[str]]:
    """point name -> the graph tensors holding its values (several where the graph has copies).
    `x`: NCHW float inputs."""
    theirs = {**graph_values(graph, x), graph.graph.input[0].name: x}
    return _match(point_values(model, torch.from_numpy(x)), theirs)


def tflite_tensors_for_points(model: nn.Module, path, x_nhwc: np.ndarray,
                              file_input: np.ndarray | None = None) -> dict[str, list[str]]:
    """The same for a float .tflite (NHWC), run on one image in the LiteRT interpreter.
    `file_input`: that image as the file takes it, where the file normalises inside its graph."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    fed = x_nhwc if file_input is None else file_input
    it.set_tensor(it.get_input_details()[0]["index"], fed[:1].astype(np.float32))
    it.invoke()
    theirs = {}
    for detail in it.get_tensor_details():
        try:
            value = it.get_tensor(detail["index"])
        except ValueError:  # tensors the interpreter did not keep
            continue
        if value.dtype == np.float32 and value.ndim >= 1:
            theirs[detail["name"]] = value
    ours = point_values(model, torch.from_numpy(np.ascontiguousarray(x_nhwc[:1].transpose(0, 3, 1, 2))))
    ours = {k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v for k, v in ours.items()}
    return _match(ours, theirs)


def rename_ranges(point_ranges: dict[str, tuple[float, float]],
                  matches: dict[str, list[str]]) -> tuple[dict[str, tuple[float, float]], dict]:
    """The optimised ranges, renamed to the tensors their points matched, and how many matched."""
    ranges = {tensor: point_ranges[point] for point, tensors in matches.items() if point in point_ranges
              for tensor in tensors}
    return ranges, {"points": len(point_ranges), "matched": sum(1 for p in point_ranges if p in matches),
                    "tensors": len(ranges)}
