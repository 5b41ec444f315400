#!/usr/bin/env python3
"""Does a target's simulation compute what its INT8 ONNX model computes? Point by point.

The `--optimize` search (and any training in the simulation) is only as good as the simulation's
fidelity to the artifact. This script takes a `jetson-orin` compile made with `--optimize ranges`
(its report holds the simulated ranges, which also went into the QDQ model), rebuilds the
simulated model the compile optimised (the same weights, scale groups split from the same 64
calibration images), and runs both on `--eval` images: the simulation in PyTorch
(quant/optimise.py's quantizers with tensorrt.simulation's settings) and `model_qdq.onnx` in ONNX
Runtime, every DequantizeLinear exposed. Per quantization point it prints the relative difference
between the two quantized tensors (a centred tensor's DQ holds x + offset: the offset is taken
back) and, at the end, each one's KL to the FP32 model. Identical arithmetic would give ~0 at
every point; where the difference first jumps is where the simulation is wrong.

    python scripts/research/tensorrt_sim_fidelity.py --weights B0.pth --calib CALIB --eval HELDOUT \\
        --folder out/b0-jetson-orin

`--target onnx --file model_int8.onnx` does the same for ONNX Runtime's QDQ file of an `onnx`
compile (the simulation with onnxruntime's settings: asymmetric activations at every point); the
scale groups are split only where the report says the compile split them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from simulation_setup import common_arguments, load  # noqa: E402

from edgeeff.backends import backend as load_backend  # noqa: E402
from edgeeff.profiles import get_target  # noqa: E402
from edgeeff.quant.optimise import ActivationQuantizers, OptimiseSettings  # noqa: E402
from edgeeff.quant.scale_groups import split_for_int8  # noqa: E402
from edgeeff.quant.simulation import _hook, quant_points, simulated_int8  # noqa: E402
from edgeeff.quant.tensor_names import onnx_tensors_for_points  # noqa: E402


def dequantized_outputs(qdq: onnx.ModelProto, tensor: str, readers: dict, inits: dict) -> tuple[str, float] | None:
    """The DequantizeLinear output that holds `tensor` quantized, and the offset a centring Add
    (`<tensor>_centre`, qdq.build_qdq) added before its Q."""
    for node in readers.get(tensor, []):
        if node.op_type == "QuantizeLinear":
            dq = next((d for d in readers.get(node.output[0], []) if d.op_type == "DequantizeLinear"), None)
            if dq is not None:
                return dq.output[0], 0.0
    for node in readers.get(tensor, []):
        if node.op_type == "Add" and node.name.endswith("_centre"):
            found = dequantized_outputs(qdq, node.output[0], readers, inits)
            if found is not None:
                return found[0], float(next(inits[i] for i in node.input if i in inits))
    return None


def kl(logits: np.ndarray, reference: np.ndarray) -> float:
    return float(torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(logits), 1),
                                            torch.log_softmax(torch.tensor(reference), 1),
                                            log_target=True, reduction="batchmean"))


def main() -> int:
    parser = common_arguments(__doc__)
    parser.add_argument("--folder", type=Path, required=True, help="a compile with --optimize ranges")
    parser.add_argument("--target", default="jetson", help="the folder's target (jetson or onnx)")
    parser.add_argument("--file", default="model_qdq.onnx", help="its INT8 ONNX file")
    parser.add_argument("--images", type=int, default=40, help="evaluation images used (default 40)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/tensorrt_sim_fidelity_b0.json"))
    args = parser.parse_args()
    report = json.loads((args.folder / "report.json").read_text())
    qdq_entry = next(a for a in report["artifacts"] if a["file"] == args.file)
    ranges = {k: tuple(v) for k, v in qdq_entry["quantization"]["optimisation"]["ranges"].items()}
    model, batches, inputs, _ = load(args)
    if report.get("scale_groups", {}).get("setting", "auto") != "off":
        model, _ = split_for_int8(model, batches)
    x = inputs[:args.images]
    target = get_target(args.target)
    backend = load_backend(target.backend)
    simulation = backend.simulation(target, model) if hasattr(backend, "simulation") else getattr(backend, "SIMULATION", {})
    settings = OptimiseSettings(**simulation)
    mapping = onnx_tensors_for_points(model, onnx.load(str(args.folder / "model_fp32.onnx")), x[:2].numpy())

    captured: dict[str, np.ndarray] = {}
    points = quant_points(model)
    with torch.no_grad():
        reference = model(x).numpy()
        with simulated_int8(model, ranges, weights=True, activations=[]):
            acts = ActivationQuantizers.for_settings(model, ranges, torch.Generator(), settings)
            # registered after the quantizers: each sees the quantized tensor
            hooks = [_hook(m, where, lambda t, n=n: captured.__setitem__(n, t.detach().numpy().copy()))
                     for n, (m, where, _) in points.items()]
            simulated = model(x).numpy()
            for h in hooks:
                h.remove()
            acts.remove()

    qdq = onnx.load(str(args.folder / args.file))
    readers: dict[str, list] = {}
    for node in qdq.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    exposed = {}
    for point, tensors in mapping.items():
        found = next((f for f in (dequantized_outputs(qdq, t, readers, inits) for t in tensors) if f), None)
        if found is not None and point in captured:
            exposed[point] = found
    graph_output = qdq.graph.output[0].name
    for name, _ in exposed.values():
        qdq.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(qdq.SerializeToString(), options, providers=["CPUExecutionProvider"])
    results = session.run([graph_output] + [n for n, _ in exposed.values()], {session.get_inputs()[0].name: x.numpy()})
    runtime = results[0]
    rows = []
    for (point, (_, offset)), value in zip(exposed.items(), results[1:]):
        value = value - offset
        ours = captured[point]
        if ours.shape != value.shape:
            continue
        rel = float(np.linalg.norm(ours - value) / (np.linalg.norm(value) + 1e-12))
        rows.append({"point": point, "centred": offset != 0.0, "relative_difference": round(rel, 4)})
        print(f"{point:<34} {'centred' if offset else '':8} relative difference {rel:.4f}", flush=True)
    summary = {"kl_fp32_simulation": round(kl(simulated, reference), 5), "kl_fp32_qdq": round(kl(runtime, reference), 5),
               "kl_qdq_simulation": round(kl(simulated, runtime), 5),
               "agreement_simulation": round(100 * float((simulated.argmax(1) == reference.argmax(1)).mean()), 2),
               "agreement_qdq": round(100 * float((runtime.argmax(1) == reference.argmax(1)).mean()), 2),
               "images": int(len(x))}
    print(summary)
    args.out.write_text(json.dumps({"folder": str(args.folder), "summary": summary, "points": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
