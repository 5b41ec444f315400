#!/usr/bin/env python3
"""Accuracy, latency and size of FP32 vs INT8 for one variant, per calibration recipe.

Runs the real `edgeeff compile` once per recipe (same images, same FP32 model), then prints a
table and writes the figures as JSON. This is how the default calibration recipe of each target
was chosen (docs/quantization.md).

    python scripts/bench_accuracy.py --variant lite0 --calib CALIB --val VAL [--target onnx|rpi|android|ios|intel]
    python scripts/bench_accuracy.py --target intel --calib CALIB --val VAL --set overflow_fix=first_layer

Without --methods, every recipe in calib/ the target's backend implements is measured. Latency is
at --threads (default 2) in the artifact's own runtime; FP16 artifacts (phones) get their own
columns. `--set KEY=VALUE` overrides one of the
target profile's [quantization] settings (TOML value syntax, e.g. ignore=["classifier"]), to
measure a knob without editing targets/*.toml.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeeff import pipeline  # noqa: E402
from edgeeff.backends import backend  # noqa: E402
from edgeeff.pipeline import CompileOptions, compile_model  # noqa: E402
from edgeeff.profiles import all_recipes, get_target  # noqa: E402
from edgeeff.report.benchmarks import add_model_and_data_arguments  # noqa: E402
from edgeeff.report.contract import format_table


def interleaved_latency(folder: Path, report: dict, fp32: dict, int8: dict, rounds: int, runs: int = 20) -> dict:
    """Median batch-1 latency of FP32 and INT8 timed in alternating blocks, so both see the same load."""
    import statistics
    import time

    from edgeeff.data.preprocess import PreprocessSpec

    module = backend(report["backend"])
    spec = PreprocessSpec.from_dict(report["preprocess"])
    threads = int8["latency_ms"]["threads"]
    runners = {}
    for artifact in (fp32, int8):
        a_spec = spec.with_layout(artifact["input"]["layout"], artifact["input"]["dtype"])
        runner = module.open_runner(folder / artifact["file"], threads, a_spec)
        x = runner.spec.to_model_input(np.zeros((1, spec.resolution, spec.resolution, 3), np.uint8) + 128)
        for _ in range(10):
            runner.predict(x)
        runners[artifact["precision"]] = (runner, x)
    times = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for precision, (runner, x) in runners.items():
            for _ in range(runs):
                start = time.perf_counter()
                runner.predict(x)
                times[precision].append((time.perf_counter() - start) * 1000)
    f, i = statistics.median(times["fp32"]), statistics.median(times["int8"])
    return {"interleaved_fp32_ms": round(f, 2), "interleaved_int8_ms": round(i, 2),
            "interleaved_ratio": round(i / f, 3), "interleaved_runs": rounds * runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data_arguments(parser)
    parser.add_argument("--target", default="onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", help="calibration recipes (default: every one the backend implements)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a [quantization] setting of the target profile (repeatable)")
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=0,
                        help="also time FP32 and INT8 alternately, this many rounds of 20 runs each: "
                             "a ratio that survives a shared, fluctuating CPU")
    parser.add_argument("--json", type=Path, help="where to write the figures (default docs/results/bench_accuracy_<variant>_<target>.json)")
    args = parser.parse_args()
    target = get_target(args.target)
    if args.set:
        overrides = tomllib.loads("\n".join(args.set))
        target = dataclasses.replace(target, quantization={**target.quantization, **overrides})
        pipeline.get_target = lambda name: target  # compile_model looks the profile up by name
    if args.methods is None:
        implemented = getattr(backend(target.backend), "RECIPE_METHODS", None)
        args.methods = [name for name, r in all_recipes().items() if implemented is None or r["method"] in implemented]
    suffix = "_" + "_".join(s.replace("=", "-").replace('"', "").replace(" ", "") for s in args.set) if args.set else ""
    out_json = args.json or Path(__file__).resolve().parents[1] / "docs" / "results" / f"bench_accuracy_{args.variant}_{args.target}{suffix}.json"

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeeff-bench-") as tmp:
        for method in args.methods:
            print(f"== {args.variant} -> {args.target}, calibration {method}", file=sys.stderr)
            folder, report = compile_model(CompileOptions(
                variant=args.variant, target=args.target, out=Path(tmp) / method, calib=args.calib,
                calib_count=args.calib_count, calib_method=method, val=args.val, weights=args.weights,
                quiet=True, latency_runs=args.latency_runs, threads=args.threads))
            by_precision = {a["precision"]: a for a in report["artifacts"]}
            fp32, int8 = by_precision["fp32"], by_precision["int8"]
            rows.append({
                "variant": args.variant, "target": args.target, "method": method, "settings": args.set,
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
                "int8_runtime": int8.get("runtime"), "quantization": int8.get("quantization"),
            })
            if "fp16" in by_precision:
                fp16 = by_precision["fp16"]
                rows[-1].update({"fp16_top1": fp16["top1"], "fp16_top1_agreement": fp16["top1_agreement"],
                                 "fp16_latency_ms": fp16["latency_ms"]["median"],
                                 "fp16_size_bytes": fp16["size_bytes"]})
            if args.rounds:
                rows[-1].update(interleaved_latency(folder, report, fp32, int8, args.rounds))
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
    if args.rounds:
        print(format_table([["method", "FP32 ms", "INT8 ms", "ratio (interleaved)"]] +
                           [[r["method"], f"{r['interleaved_fp32_ms']:.2f}", f"{r['interleaved_int8_ms']:.2f}",
                             f"{r['interleaved_ratio']:.2f}"] for r in rows]))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"machine": {"host": platform.machine(), "processor": platform.processor(),
                                                "cpus": __import__("os").cpu_count()},
                                    "calib": str(args.calib), "val": str(args.val), "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
