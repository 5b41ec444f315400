#!/usr/bin/env python3
"""The bars of `edgeeff sweep` and `--workers` (issue #23, docs/sweep.md), measured.

  sweep        a models x targets sweep on a local Ray (default: Lite0 and the B0 test model x
               onnx, intel, rpi) against the same cells as separate `edgeeff compile` processes:
               wall time of each, and whether every cell's report.json equals its compile's
               (timings, memory, latency and the reference-cache flag aside)
  sensitivity  `compile --sensitivity` of one model (default: the B0 test model, onnx) serially
               and with `--workers N` on a local Ray: wall time of each, and whether the layer
               rankings (and every SQNR) are identical

Every run is a fresh process (`python -m edgeeff ...`) with its own empty cache, one at a time.
Writes JSON (default docs/results/bench_sweep.json) and prints a table.

    python scripts/bench_sweep.py --calib CALIB --val VAL --b0-weights FILE [--part sweep|sensitivity|both]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeeff.data.images import find_images, spread_choice  # noqa: E402
from edgeeff.report.benchmarks import machine_info, machine_line  # noqa: E402
from edgeeff.report.contract import comparable, format_table  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: list[str], cache: Path) -> float:
    """`python -m edgeeff ARGS` in a fresh process with its own cache; its wall time (s)."""
    env = {**os.environ, "EDGEEFF_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    log("edgeeff " + " ".join(args))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgeeff", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 4):
        raise SystemExit(f"edgeeff {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    log(f"  {seconds:.0f} s")
    return seconds


def differences(a, b, path="") -> list[str]:
    """Where two JSON values differ (the first few paths), for the record."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in differences(a.get(key), b.get(key), f"{path}.{key}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path or "."]


def bench_sweep(args, work: Path) -> dict:
    models = [("lite0", "lite0", None), ("b0-test", "b0", args.b0_weights)]
    options = {"calib": str(args.calib), "val": str(args.val), "calib_count": args.calib_count,
               "latency_runs": args.latency_runs, **dict(args.option)}
    lines = [f"targets = {json.dumps(args.targets)}", f"cpus = {args.cpus}", "[options]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    for name, variant, weights in models:
        lines += ["[[models]]", f"name = {json.dumps(name)}", f"variant = {json.dumps(variant)}"]
        if weights:
            lines.append(f"weights = {json.dumps(str(weights))}")
    toml = work / "bench.toml"
    toml.write_text("\n".join(lines) + "\n")
    sweep_out, separate_out = work / "sweep", work / "separate"
    sweep_s = run(["sweep", str(toml), "--out", str(sweep_out), "--cpus", str(args.cpus), "--quiet"], work / "cache-sweep")
    separate_s, cells = 0.0, []
    for name, variant, weights in models:
        for target in args.targets:
            cmd = ["compile", "--variant", variant, "--target", target, "--calib", str(args.calib), "--val",
                   str(args.val), "--calib-count", str(args.calib_count), "--latency-runs", str(args.latency_runs),
                   "--out", str(separate_out / name), "--quiet"] + (["--weights", str(weights)] if weights else [])
            cmd += [part for key, value in args.option for part in (f"--{key.replace('_', '-')}", value)]
            # Each separate compile gets its own empty cache: what six independent runs cost.
            seconds = run(cmd, work / f"cache-{name}-{target}")
            separate_s += seconds
            mine = json.loads((sweep_out / name / f"{variant}-{target}" / "report.json").read_text())
            theirs = json.loads((separate_out / name / f"{variant}-{target}" / "report.json").read_text())
            diff = differences(comparable(mine), comparable(theirs))
            int8 = next(a for a in mine["artifacts"] if a["precision"] == "int8")
            cells.append({"model": name, "target": target, "separate_s": round(seconds, 1), "identical": not diff,
                          "differences": diff[:10], "int8_top1_agreement": int8.get("top1_agreement")})
    return {"cpus": args.cpus, "targets": args.targets, "options": dict(args.option), "sweep_s": round(sweep_s, 1),
            "separate_total_s": round(separate_s, 1), "cells": cells,
            "sweep_summary": json.loads((sweep_out / "sweep.json").read_text())["cells"]}


def bench_sensitivity(args, work: Path) -> dict:
    base = ["compile", "--variant", args.sens_variant, "--target", args.sens_target, "--calib", str(args.calib),
            "--val", str(args.val), "--calib-count", str(args.calib_count), "--latency-runs",
            str(args.latency_runs), "--sensitivity", "--quiet"]
    if args.sens_variant == "b0":
        base += ["--weights", str(args.b0_weights)]
    base += args.sens_extra
    runs = {}
    for label, extra in (("serial", []), (f"{args.workers} workers", ["--workers", str(args.workers)])):
        out = work / f"sens-{label.replace(' ', '-')}"
        seconds = run(base + ["--out", str(out)] + extra, work / f"cache-sens-{label.replace(' ', '-')}")
        report = json.loads((out / f"{args.sens_variant}-{args.sens_target}" / "report.json").read_text())
        runs[label] = {"wall_s": round(seconds, 1), "sensitivity_s": report["sensitivity"]["seconds"],
                       "stage_s": report["timings_s"].get("sensitivity"), "sensitivity": report["sensitivity"]}
    serial, fanned = runs["serial"]["sensitivity"], runs[f"{args.workers} workers"]["sensitivity"]
    same_order = [r["layer"] for r in serial["layers"]] == [r["layer"] for r in fanned["layers"]]
    same_sqnr = [r["sqnr_db"] for r in serial["layers"]] == [r["sqnr_db"] for r in fanned["layers"]]
    for value in runs.values():
        value["layers"] = len(value.pop("sensitivity")["layers"])
    return {"variant": args.sens_variant, "target": args.sens_target, "workers": args.workers,
            "extra_options": args.sens_extra, "runs": runs, "same_ranking": same_order, "same_sqnr": same_sqnr}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calib", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True, help="validation folder (folders = synsets) or `path label` list file")
    p.add_argument("--val-subset", type=int, metavar="N",
                   help="use N images of the --val folder, evenly spread over its sorted files (a list file in a "
                        "temporary folder), for a cut-down run")
    p.add_argument("--b0-weights", type=Path, required=True)
    p.add_argument("--calib-count", type=int, default=300)
    p.add_argument("--latency-runs", type=int, default=20)
    p.add_argument("--targets", nargs="+", default=["onnx", "intel", "rpi"])
    p.add_argument("--cpus", type=int, default=2, help="the sweep's local Ray CPUs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sens-variant", default="b0")
    p.add_argument("--sens-target", default="onnx")
    p.add_argument("--sens-extra", nargs=argparse.REMAINDER, default=[],
                   help="more compile options for both sensitivity runs (last on the line)")
    p.add_argument("--option", action="append", default=[], type=lambda text: tuple(text.split("=", 1)),
                   metavar="KEY=VALUE", help="sweep part: one more compile option for every cell and every separate "
                                             "compile, e.g. --option optimize=off (a cut-down run)")
    p.add_argument("--part", choices=["sweep", "sensitivity", "both"], default="both")
    p.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "bench_sweep.json")
    args = p.parse_args()
    result = {"machine": machine_info(), "calib": str(args.calib), "val": str(args.val),
              "calib_count": args.calib_count, "latency_runs": args.latency_runs}
    with tempfile.TemporaryDirectory(prefix="edgeeff-bench-sweep-") as tmp:
        if args.val_subset:
            files = spread_choice(find_images(args.val), args.val_subset)
            listed = Path(tmp) / "val_subset.txt"
            listed.write_text("".join(f"{f.resolve()} {f.parent.name}\n" for f in files))
            result["val_subset"] = {"images": len(files), "of": str(args.val), "how": "evenly spread (spread_choice)"}
            args.val = listed
        if args.part in ("sensitivity", "both"):
            result["sensitivity"] = bench_sensitivity(args, Path(tmp))
        if args.part in ("sweep", "both"):
            result["sweep"] = bench_sweep(args, Path(tmp))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(machine_line(result["machine"]))
    if "sensitivity" in result:
        s = result["sensitivity"]
        rows = [["run", "wall s", "sensitivity s", "layers"]] + [
            [label, f"{r['wall_s']:.0f}", f"{r['sensitivity_s']:.0f}", str(r["layers"])] for label, r in s["runs"].items()]
        print(f"\nsensitivity, {s['variant']} on {s['target']}: same ranking {s['same_ranking']}, "
              f"same SQNRs {s['same_sqnr']}")
        print(format_table(rows))
    if "sweep" in result:
        s = result["sweep"]
        rows = [["model", "target", "separate s", "report identical", "INT8 agreement %"]] + [
            [c["model"], c["target"], f"{c['separate_s']:.0f}", str(c["identical"]), str(c["int8_top1_agreement"])]
            for c in s["cells"]]
        print(f"\nsweep on a local Ray ({s['cpus']} CPUs): {s['sweep_s']:.0f} s; the same cells as separate "
              f"compiles: {s['separate_total_s']:.0f} s")
        print(format_table(rows))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
