#!/usr/bin/env python3
"""Wall time and peak memory of each `compile` stage, and how they grow.

Each run is a fresh `edgeeff compile` process with the cache off, so every stage does its real
work. Two sweeps: calibration images (--calib-counts, Lite0) and model size (Lite0, the B0 test
model, B3 with random weights). Writes JSON and a plot, prints a table.

    python scripts/bench_compile.py --calib CALIB --val VAL [--targets onnx] [--b0-weights FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeeff.report import format_table  # noqa: E402


def run_compile(variant: str, target: str, calib: Path, val: Path, count: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeeff-bench-compile-") as tmp:
        env = {**os.environ, "EDGEEFF_CACHE": "off"}
        cmd = [sys.executable, "-m", "edgeeff", "compile", "--variant", variant, "--target", target,
               "--calib", str(calib), "--calib-count", str(count), "--val", str(val), "--out", tmp,
               "--quiet", "--latency-runs", "20", *extra]
        subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        folder = next(Path(tmp).glob(f"{variant}*-{target}"))
        report = json.loads((folder / "report.json").read_text())
    timings, peaks = report["timings_s"], report["peak_rss_mb"]
    return {"variant": variant, "target": target, "calib_images": report["calibration"]["images"],
            "calib_requested": count, "weights": report["model"]["weights"]["source"],
            "total_s": round(sum(timings.values()), 1), "peak_rss_mb": max(peaks.values()),
            "stages_s": timings, "stage_peak_rss_mb": peaks}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, sweep, key in ((axes[0], "calibration", "calib_images"), (axes[1], "model", "variant")):
        subset = [r for r in rows if r["sweep"] == sweep]
        labels = [str(r[key]) + ("" if sweep == "calibration" else f"\n({r['target']})") for r in subset]
        stages = sorted({s for r in subset for s in r["stages_s"]}, key=lambda s: -max(r["stages_s"].get(s, 0) for r in subset))
        bottom = [0.0] * len(subset)
        for stage in stages:
            values = [r["stages_s"].get(stage, 0.0) for r in subset]
            ax.bar(labels, values, bottom=bottom, label=stage)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_ylabel("seconds")
        ax.set_title(f"compile wall time by stage ({sweep} sweep)")
        twin = ax.twinx()
        twin.plot(labels, [r["peak_rss_mb"] for r in subset], "k--o", label="peak RSS")
        twin.set_ylabel("peak RSS (MB)")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--targets", nargs="+", default=["onnx"])
    parser.add_argument("--calib-counts", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--b0-weights", type=Path, default=REPO.parent / "shared/data/weights/efficientnet-b0-swish-se-test.pth")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    args = parser.parse_args()

    rows = []
    for target in args.targets:
        for count in args.calib_counts:
            print(f"== lite0 -> {target}, {count} calibration images", file=sys.stderr)
            rows.append({"sweep": "calibration", **run_compile("lite0", target, args.calib, args.val, count, [])})
        models = [("lite0", []), ("b3", ["--random-weights"])]
        if args.b0_weights.is_file():
            models.insert(1, ("b0", ["--weights", str(args.b0_weights)]))
        for variant, extra in models:
            print(f"== {variant} -> {target}", file=sys.stderr)
            rows.append({"sweep": "model", **run_compile(variant, target, args.calib, args.val, 300, extra)})

    table = [["sweep", "variant", "target", "calib imgs", "total s", "peak MB", "slowest stages"]]
    for r in rows:
        slow = sorted(r["stages_s"].items(), key=lambda kv: -kv[1])[:3]
        table.append([r["sweep"], r["variant"], r["target"], str(r["calib_images"]), f"{r['total_s']:.1f}",
                      f"{r['peak_rss_mb']:.0f}", ", ".join(f"{k} {v:.1f}" for k, v in slow)])
    print(format_table(table))
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"host": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "load_average_at_end": os.getloadavg()}
    (args.out / "bench_compile.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    plot(rows, args.out / "bench_compile.png")
    print(f"\nwrote {args.out / 'bench_compile.json'} and bench_compile.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
