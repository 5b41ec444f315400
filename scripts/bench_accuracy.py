#!/usr/bin/env python3
"""Accuracy, latency and size of FP32 vs INT8 for one variant, per calibration recipe.

Runs the real `edgeeff compile` once per recipe (same images, same FP32 model), then prints a
table and writes the figures as JSON. This is how the default calibration recipe of each target
was chosen (docs/quantization.md).

    python scripts/bench_accuracy.py --variant lite0 --calib CALIB --val VAL [--target onnx|rpi|android|ios]

Without --methods, every recipe in calib/ the target's backend implements is measured. Latency is
at --threads (default 2) in the artifact's own runtime; FP16 artifacts (phones) get their own columns.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeeff.pipeline import CompileOptions, compile_model  # noqa: E402
from edgeeff.backends import backend as load_backend  # noqa: E402
from edgeeff.errors import UserError  # noqa: E402
from edgeeff.profiles import all_recipes, get_target  # noqa: E402
from edgeeff.report import format_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="lite0")
    parser.add_argument("--target", default="onnx")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--calib-count", type=int, default=300)
    parser.add_argument("--methods", nargs="+", help="calibration recipes (default: all the target supports)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--json", type=Path, help="where to write the figures (default docs/results/bench_accuracy_<variant>_<target>.json)")
    args = parser.parse_args()
    out_json = args.json or Path(__file__).resolve().parents[1] / "docs" / "results" / f"bench_accuracy_{args.variant}_{args.target}.json"

    if not args.methods:
        target = get_target(args.target)
        backend = load_backend(target.backend)
        args.methods = []
        for name, recipe in all_recipes().items():
            try:
                if hasattr(backend, "check_job"):
                    backend.check_job(target, recipe)
                args.methods.append(name)
            except UserError:
                continue
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeeff-bench-") as tmp:
        for method in args.methods:
            print(f"== {args.variant} -> {args.target}, calibration {method}", file=sys.stderr)
            _, report = compile_model(CompileOptions(
                variant=args.variant, target=args.target, out=Path(tmp) / method, calib=args.calib,
                calib_count=args.calib_count, calib_method=method, val=args.val, weights=args.weights,
                quiet=True, latency_runs=args.latency_runs, threads=args.threads))
            by_precision = {a["precision"]: a for a in report["artifacts"]}
            fp32, int8 = by_precision["fp32"], by_precision["int8"]
            rows.append({
                "variant": args.variant, "target": args.target, "method": method,
                "reference_top1": report["reference"]["top1"], "reference_top5": report["reference"]["top5"],
                "fp32_top1": fp32["top1"], "int8_top1": int8["top1"], "int8_top5": int8["top5"],
                "top1_drop": int8["top1_drop"], "top1_agreement": int8["top1_agreement"],
                "fp32_latency_ms": fp32["latency_ms"]["median"], "int8_latency_ms": int8["latency_ms"]["median"],
                "latency_ratio": round(int8["latency_ms"]["median"] / fp32["latency_ms"]["median"], 3),
                "fp32_size_bytes": fp32["size_bytes"], "int8_size_bytes": int8["size_bytes"],
                "quantize_seconds": report["timings_s"]["quantize"],
                "compile_seconds": round(sum(report["timings_s"].values()), 1),
                "threads": int8["latency_ms"]["threads"],
                "fp32_format": fp32["format"], "int8_input_dtype": int8["input"]["dtype"],
            })
            if "fp16" in by_precision:
                fp16 = by_precision["fp16"]
                rows[-1].update({"fp16_top1": fp16["top1"], "fp16_top1_agreement": fp16["top1_agreement"],
                                 "fp16_latency_ms": fp16["latency_ms"]["median"],
                                 "fp16_size_bytes": fp16["size_bytes"]})
    table = [["method", "FP32 top-1", "INT8 top-1", "top-5", "drop", "agree%", "FP32 ms", "INT8 ms", "ratio",
              "INT8 MB", "quant s", "compile s"]]
    for r in rows:
        table.append([r["method"], f"{r['reference_top1']:.2f}", f"{r['int8_top1']:.2f}", f"{r['int8_top5']:.2f}",
                      f"{r['top1_drop']:.2f}", f"{r['top1_agreement']:.2f}", f"{r['fp32_latency_ms']:.2f}",
                      f"{r['int8_latency_ms']:.2f}", f"{r['latency_ratio']:.2f}", f"{r['int8_size_bytes'] / 1e6:.2f}",
                      f"{r['quantize_seconds']:.1f}", f"{r['compile_seconds']:.1f}"])
    print(format_table(table))
    for r in rows:
        if "fp16_top1" in r:
            print(f"{r['method']}: FP16 top-1 {r['fp16_top1']:.2f}, agree {r['fp16_top1_agreement']:.2f}%, "
                  f"{r['fp16_latency_ms']:.2f} ms, {r['fp16_size_bytes'] / 1e6:.2f} MB")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"machine": {"host": platform.machine(), "processor": platform.processor(),
                                                "cpus": __import__("os").cpu_count()},
                                    "calib": str(args.calib), "val": str(args.val), "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
