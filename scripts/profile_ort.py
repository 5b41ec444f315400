#!/usr/bin/env python3
"""Where an INT8 ONNX model's time goes in ONNX Runtime, against its FP32 twin.

For each .onnx file given (e.g. an output folder's model_fp32.onnx and model_int8.onnx):
- ONNX Runtime's own profiler (`SessionOptions.enable_profiling`) over `--runs` batch-1 calls:
  kernel time per operator kind (convolutions split into stem/3x3, depthwise and 1x1; Mul into
  same-shape (swish) and broadcast (squeeze-excitation's gate)), per call and as a share;
- the graph ONNX Runtime really runs after its optimisation (ORT_ENABLE_ALL, saved and read back):
  the node count per type, and how many float operators are left between the integer ones;
- the files timed in turns in one process (edgeeff.scoring.latency_in_turns, the same rounds
  `compile` uses), so the ratio to the first file holds on this shared host.

All sessions are edgeeff's (edgeeff.backends.onnxruntime.session): 2 intra-op threads (--threads),
1 inter-op thread, sequential execution, thread spinning on (ONNX Runtime's default, as compile measures). Profiler figures are summed kernel
times, not wall time: they show proportions; the in-turns medians are the latency.

    python scripts/profile_ort.py OUT/b0-onnx/model_fp32.onnx OUT/b0-onnx/model_int8.onnx --json profile.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeeff.backends.onnxruntime import session  # noqa: E402
from edgeeff.report.benchmarks import machine_info, machine_line  # noqa: E402
from edgeeff.report.contract import format_table  # noqa: E402

# Operators that run on integers in ONNX Runtime's QDQ-fused graph; anything else between them is a
# float island (its DequantizeLinear/QuantizeLinear pairs included).
INTEGER_OPS = {"QLinearConv", "QLinearMul", "QLinearAdd", "QLinearSigmoid", "QLinearGlobalAveragePool",
               "QLinearAveragePool", "QLinearLeakyRelu", "QLinearConcat", "QLinearSoftmax", "QGemm",
               "QLinearMatMul", "MaxPool", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def _kind(op: str, node, shapes: list) -> str:
    """Operator kind, with the distinctions that matter for EfficientNet's time."""
    if op in ("QLinearConv", "Conv", "FusedConv") and node is not None:
        attributes = {a.name: a for a in node.attribute}
        group = attributes["group"].i if "group" in attributes else 1
        kernel = list(attributes["kernel_shape"].ints) if "kernel_shape" in attributes else []
        return f"{op} " + ("depthwise" if group > 1 else "1x1" if kernel == [1, 1] else "kxk")
    if op in ("QLinearMul", "Mul"):
        maps = [s for s in shapes if len(s) == 4]
        return f"{op} " + ("same-shape" if len(maps) == 2 and maps[0] == maps[1] else "broadcast")
    return op


def profile(path: Path, threads: int, runs: int, x: np.ndarray) -> dict:
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgeeff-profile-") as tmp:
        optimised = Path(tmp) / "optimised.onnx"
        sess = session(path, threads, profile=True, optimised_path=optimised)
        name = sess.get_inputs()[0].name
        for _ in range(runs):
            sess.run(None, {name: x})
        trace = Path(sess.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink()
        graph = onnx.load(str(optimised), load_external_data=False).graph
    nodes = {node.name: node for node in graph.node}
    per_kind, counts = collections.defaultdict(float), collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node_name = event["name"][: -len("_kernel_time")]
        args = event["args"]
        shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
        kind = _kind(args["op_name"], nodes.get(node_name), shapes)
        per_kind[kind] += event["dur"] / 1000 / runs
        counts[kind] += 1
    total = sum(per_kind.values())
    ops = collections.Counter(node.op_type for node in graph.node)
    quantized = any(op.startswith("QLinear") or op == "QGemm" for op in ops)
    float_ops = {op: n for op, n in ops.items() if op not in INTEGER_OPS} if quantized else {}
    return {"file": str(path), "kernel_ms_per_call": round(total, 3),
            "kinds": [{"kind": k, "ms": round(v, 3), "share": round(v / total, 3), "nodes": counts[k] // runs}
                      for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1])],
            "optimised_graph_ops": dict(sorted(ops.items())), "float_ops_left": float_ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="ONNX files; the first is the ratio's reference")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100, help="profiled calls per file")
    parser.add_argument("--latency-runs", type=int, default=200, help="timed calls per file, in turns")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    for path in args.files:
        if not path.is_file():
            sys.exit(f"{path}: no such file")

    from edgeeff.backends.onnxruntime import OrtRunner
    from edgeeff.data.preprocess import PreprocessSpec
    from edgeeff.scoring import latency_in_turns

    first = session(args.files[0], args.threads).get_inputs()[0]
    size = first.shape[-1] if isinstance(first.shape[-1], int) else 224
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)  # timing only: any input
    profiles = [profile(path, args.threads, args.runs, x) for path in args.files]

    spec = PreprocessSpec(resolution=size, crop_pct=0.875, interpolation="bicubic", mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225))
    runners = {str(path): OrtRunner(path, args.threads, spec) for path in args.files}
    crop = np.zeros((size, size, 3), np.uint8) + 128
    timed = latency_in_turns(runners, crop, args.threads, runs=args.latency_runs, reference=str(args.files[0]))

    kinds = sorted({k["kind"] for p in profiles for k in p["kinds"]},
                   key=lambda k: -max(next((x["ms"] for x in p["kinds"] if x["kind"] == k), 0) for p in profiles))
    header = ["operator kind"] + [f"{Path(p['file']).name} ms (nodes)" for p in profiles]
    rows = [[k] + [next((f"{x['ms']:.2f} ({x['nodes']})" for x in p["kinds"] if x["kind"] == k), "-")
                   for p in profiles] for k in kinds]
    rows.append(["kernel total"] + [f"{p['kernel_ms_per_call']:.2f}" for p in profiles])
    rows.append(["in turns: median ms"] + [f"{timed[str(p['file'])]['median']:.2f}" for p in profiles])
    rows.append(["in turns: x first file"] + [f"{timed[str(p['file'])].get('ratio_to_fp32', 1.0):.3f}"
                                              for p in profiles])
    rows.append(["float ops left"] + [", ".join(f"{o} {n}" for o, n in p["float_ops_left"].items()) or "-"
                                      for p in profiles])
    print(format_table([header, *rows]))
    machine = machine_info()
    print(machine_line(machine))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": args.threads, "profiled_calls": args.runs,
                                         "machine": machine, "profiles": profiles,
                                         "latency_in_turns": timed}, indent=1))


if __name__ == "__main__":
    main()
