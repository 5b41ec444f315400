"""Which ONNX or TFLite tensor is which PyTorch quantization point: found by value, not by name.

The optimisation (quant/optimise.py) chooses activation ranges per quantization point of the
PyTorch model (quant/simulation.py's names: `blocks.3.dw.bn`, `blocks.3.se.gate`, ...); the ONNX
quantizers want them per tensor of the graph they quantize, whose names the exporter makes up
(`silu_3`, `mul_12`) and whose BatchNorms are folded. Running both on the same images and pairing
every point with the graph tensors that hold the same values is exact, and survives any change in
the exporter's naming. A tensor no point matches keeps the recipe's range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..util import interpreter_keeping_every_tensor
from .simulation import _hook, quant_points

MATCH_TOLERANCE = 1e-3  # of the tensor's largest magnitude: float export noise is ~1e-6
# Values kept per tensor (evenly spaced over it): with its shape, extremes and mean, what the match
# compares. Whole tensors were kept before: B7 at 600 px has GBs of activations per image, and
# holding every tensor of two images from both runtimes took its compile to a 15 GB peak.
PROBE_VALUES = 4096


@dataclass(frozen=True)
class Fingerprint:
    shape: tuple
    low: float
    high: float
    mean: float
    probe: np.ndarray  # PROBE_VALUES values at evenly spaced flat positions (all, for small tensors)

    @classmethod
    def of(cls, value: np.ndarray) -> "Fingerprint":
        flat = value.reshape(-1)
        step = max(1, flat.size // PROBE_VALUES)
        return cls(tuple(value.shape), float(flat.min()), float(flat.max()), float(flat.mean(dtype=np.float64)),
                   flat[::step][:PROBE_VALUES].astype(np.float32, copy=True))

    def matches(self, other: "Fingerprint") -> bool:
        """The same tensor to export noise: every compared value within MATCH_TOLERANCE of this
        tensor's largest magnitude (a clipped copy differs in its extremes, a shifted one in its mean)."""
        if self.shape != other.shape:
            return False
        bound = MATCH_TOLERANCE * max(abs(self.low), abs(self.high), 1e-6)
        return (abs(self.low - other.low) <= bound and abs(self.high - other.high) <= bound
                and abs(self.mean - other.mean) <= bound
                and float(np.abs(self.probe - other.probe).max(initial=0.0)) <= bound)


def point_values(model: nn.Module, x: torch.Tensor, nhwc: bool = False) -> dict[str, Fingerprint]:
    """Each quantization point's tensor on input `x`, as a fingerprint (taken as it passes);
    `nhwc`: 4-d tensors laid out as TFLite's."""
    seen: dict[str, Fingerprint] = {}

    def keep(name, t):
        value = t.detach().numpy()
        seen[name] = Fingerprint.of(value.transpose(0, 2, 3, 1) if nhwc and value.ndim == 4 else value)

    hooks = [_hook(module, where, lambda t, n=name: keep(n, t)) for name, (module, where, _)
             in quant_points(model).items()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def graph_values(graph, x: np.ndarray) -> dict[str, Fingerprint]:
    """Every float tensor a node of the ONNX model computes, on the first image of `x` (ONNX Runtime,
    CPU), as fingerprints; fetched in memory-bounded groups (calibration.bounded_runs)."""
    import onnx
    import onnxruntime as ort

    from .calibration import activation_bytes, bounded_runs

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
    per_image = activation_bytes(model, names)
    found = {}
    for _, group, values in bounded_runs(session, session.get_inputs()[0].name, names, per_image, x[:1]):
        found.update({n: Fingerprint.of(v) for n, v in zip(group, values)
                      if isinstance(v, np.ndarray) and v.dtype == np.float32})
    return found


def _match(ours: dict[str, Fingerprint], theirs: dict[str, Fingerprint]) -> dict[str, list[str]]:
    by_shape: dict[tuple, list[str]] = {}
    for name, value in theirs.items():
        by_shape.setdefault(value.shape, []).append(name)
    found = {}
    for point, value in ours.items():
        matches = [n for n in by_shape.get(value.shape, []) if value.matches(theirs[n])]
        if matches:
            found[point] = matches
    return found


def onnx_tensors_for_points(model: nn.Module, graph, x: np.ndarray) -> dict[str, list[str]]:
    """point name -> the graph tensors holding its values (several where the graph has copies).
    `x`: NCHW float inputs, of which the first image is used (its fingerprints are specific enough)."""
    x = x[:1]
    theirs = {**graph_values(graph, x), graph.graph.input[0].name: Fingerprint.of(x)}
    return _match(point_values(model, torch.from_numpy(x)), theirs)


def tflite_tensors_for_points(model: nn.Module, path, x_nhwc: np.ndarray,
                              file_input: np.ndarray | None = None) -> dict[str, list[str]]:
    """The same for a float .tflite (NHWC), run on one image in the LiteRT interpreter.
    `file_input`: that image as the file takes it, where the file normalises inside its graph."""
    it, _ = interpreter_keeping_every_tensor(path, threads=1)  # one image: one thread is plenty
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
            theirs[detail["name"]] = Fingerprint.of(value)
    ours = point_values(model, torch.from_numpy(np.ascontiguousarray(x_nhwc[:1].transpose(0, 3, 1, 2))),
                        nhwc=True)
    return _match(ours, theirs)


def rename_ranges(point_ranges: dict[str, tuple[float, float]],
                  matches: dict[str, list[str]]) -> tuple[dict[str, tuple[float, float]], dict]:
    """The optimised ranges, renamed to the tensors their points matched, and how many matched."""
    ranges = {tensor: point_ranges[point] for point, tensors in matches.items() if point in point_ranges
              for tensor in tensors}
    return ranges, {"points": len(point_ranges), "matched": sum(1 for p in point_ranges if p in matches),
                    "tensors": len(ranges)}
