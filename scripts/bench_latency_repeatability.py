#!/usr/bin/env python3
"""Does `compile` report the same INT8/FP32 latency ratio twice? Runs the same compile N times.

Each run is a fresh `edgeeff compile` process (the cache on, so runs after the first reuse the
calibration statistics and reference logits; the artifacts are the same bytes, which is checked),
and reads `ratio_to_fp32` of every INT8 artifact from its report.json. Prints a table (ratio per
run, the spread as (max - min) / median) with the load average before and after each run, and
writes JSON. The issue's bar: ratios within 10% of each other on an idle machine.

    python scripts/bench_latency_repeatability.py --variant lite0 --target onnx --runs 3 [--calib DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeeff.report.benchmarks import machine_info, machine_line  # noqa: E402
from edgeeff.report.contract import format_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="lite0")
    parser.add_argument("--target", default="onnx")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=200, help="compile's --latency-runs")
    parser.add_argument("--calib", type=Path, default=None)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "latency_repeatability.json")
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory(prefix="edgeeff-repeat-") as tmp:
        for k in range(args.runs):
            out = Path(tmp) / f"run{k}"
            command = [sys.executable, "-m", "edgeeff", "compile", "--variant", args.variant, "--target", args.target,
                       "--out", str(out), "--latency-runs", str(args.latency_runs), "--quiet"]
            command += ["--calib", str(args.calib)] if args.calib else []
            command += ["--weights", str(args.weights)] if args.weights else []
            load_before = os.getloadavg()
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"run {k}: compile failed: {done.stderr.strip().splitlines()[-1:]}")
            folder = next(p for p in out.iterdir() if p.is_dir())
            report = json.loads((folder / "report.json").read_text())
            ratios = {a["file"]: a["latency_ms"].get("ratio_to_fp32") for a in report["artifacts"]
                      if a["precision"] != "fp32" and a.get("latency_ms")}
            digests = {a["file"]: hashlib.sha256((folder / a["file"]).read_bytes()).hexdigest()
                       for a in report["artifacts"] if (folder / a["file"]).is_file()}
            runs.append({"run": k, "ratios": ratios, "sha256": digests, "load_before": load_before,
                         "load_after": os.getloadavg(),
                         "medians_ms": {a["file"]: a["latency_ms"]["median"] for a in report["artifacts"]
                                        if a.get("latency_ms")}})
            print(f"run {k + 1}/{args.runs}: {ratios}", file=sys.stderr)

    files = sorted({f for r in runs for f in r["ratios"] if r["ratios"][f] is not None})
    rows, summary = [], {}
    for f in files:
        values = [r["ratios"][f] for r in runs]
        spread = (max(values) - min(values)) / statistics.median(values)
        summary[f] = {"ratios": values, "spread": round(spread, 3), "within_10_percent": spread <= 0.10}
        rows.append([f, *(f"{v:.3f}" for v in values), f"{100 * spread:.1f}%", "yes" if spread <= 0.10 else "no"])
    identical = len({json.dumps(r["sha256"], sort_keys=True) for r in runs}) == 1
    header = ["artifact", *(f"run {r['run'] + 1}" for r in runs), "spread", "within 10%"]
    print(format_table([header, *rows]))
    print("load average (1 min) before each run: " + ", ".join(f"{r['load_before'][0]:.1f}" for r in runs))
    print(f"artifacts identical across runs: {identical}")
    machine = machine_info()
    print(machine_line(machine))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"variant": args.variant, "target": args.target, "latency_runs": args.latency_runs,
                                     "runs": runs, "summary": summary, "artifacts_identical": identical,
                                     "machine": machine}, indent=1))


if __name__ == "__main__":
    main()
