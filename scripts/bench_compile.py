#!/usr/bin/env python3
"""Wall time and peak memory of each `compile` stage, and how they grow.

Each run is a fresh `edgeeff compile` process with the cache off, so every stage does its real
work (the FP32 reference included). Two sweeps per target:

  calibration images  Lite0 with --calib-counts images (default 100, 300, 1000)
  model size          Lite0, the B0 swish+SE test model (--b0-weights), B3 with random weights,
                      each with 300 calibration images

A count larger than the --calib folder holds is reached by linking every image of the folder
again (in a temporary folder, never in the repo) until there are enough: the images' sizes, and
so the decoding cost, stay those of real calibration photos, and the validation images are never
calibrated on. Such rows say how many distinct images they had.

Writes JSON (docs/results/bench_compile.json), a plot (bench_compile.png, needs the `plot` extra),
prints a table, and regenerates its section of docs/benchmarks.md.

`--one-command onnx,intel,rpi,android,jetson` measures instead what a user waits for: one
`edgeeff compile --target onnx,intel,...` of Lite0 (300 calibration images, the validation
images), on a cold cache (an empty cache folder), as a fresh process: wall time, peak RSS, each folder complete (report.json
and every verified artifact present), each target's stages. Writes bench_compile_one_command.json
and its own section of docs/benchmarks.md.

    python scripts/bench_compile.py --calib CALIB --val VAL [--targets onnx intel rpi] [--b0-weights FILE]
    python scripts/bench_compile.py --calib CALIB --val VAL --one-command onnx,intel,rpi,android,jetson
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeeff.data.images import find_images  # noqa: E402
from edgeeff.report.benchmarks import machine_info, machine_line, replace_section  # noqa: E402
from edgeeff.report.contract import format_table, markdown_table  # noqa: E402

# Stages grouped for the table and the plot (the JSON keeps every stage as compile reported it).
GROUPS = ("load", "export", "quantize", "reference", "evaluate", "latency", "other")
T0 = time.perf_counter()


def log(message: str) -> None:
    elapsed = int(time.perf_counter() - T0)
    print(f"[{elapsed // 60:2d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


def stage_group(stage: str) -> str:
    if stage.startswith("load"):
        return "load"
    if stage == "export_onnx":
        return "export"
    if stage == "quantize":
        return "quantize"
    if stage == "evaluate_reference":
        return "reference"
    if stage.startswith("evaluate"):
        return "evaluate"
    if stage.startswith("latency"):
        return "latency"
    return "other"


def calibration_folder(calib: Path, count: int, scratch: Path) -> tuple[Path, int]:
    """(folder holding at least `count` images, distinct images in it)."""
    images = find_images(calib)
    if count <= len(images):
        return calib, count
    folder = scratch / f"calib-{count}"
    if not folder.is_dir():
        for copy in range(math.ceil(count / len(images))):
            for image in images:
                link = folder / f"copy{copy}" / image.relative_to(calib)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(image.resolve())
    return folder, len(images)


def run_compile(variant: str, target: str, calib: Path, val: Path, count: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeeff-bench-compile-") as tmp:
        env = {**os.environ, "EDGEEFF_CACHE": "off"}
        cmd = [sys.executable, "-m", "edgeeff", "compile", "--variant", variant, "--target", target,
               "--calib", str(calib), "--calib-count", str(count), "--val", str(val), "--out", tmp,
               "--quiet", "--latency-runs", "20", *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS, not a running max
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        folder = next(Path(tmp).glob(f"{variant}*-{target}"))
        report = json.loads((folder / "report.json").read_text())
    timings, peaks = report["timings_s"], report["peak_rss_mb"]
    groups = {g: 0.0 for g in GROUPS}
    for stage, seconds in timings.items():
        groups[stage_group(stage)] += seconds
    # Peak RSS is a running maximum: the stage that raised it most is where memory goes.
    previous, peak_stage, rise = 0.0, None, -1.0
    for stage, mb in peaks.items():
        if mb - previous > rise:
            peak_stage, rise = stage, mb - previous
        previous = max(previous, mb)
    return {"variant": variant, "target": target, "calib_images": report["calibration"]["images"],
            "calib_requested": count,
            "weights": report["model"]["weights"]["source"] or "random",
            "resolution": report["preprocess"]["resolution"], "parameters": report["model"]["parameters"],
            "stages_total_s": round(sum(timings.values()), 1), "process_s": round(wall, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "largest_rise_stage": peak_stage,
            "groups_s": {g: round(v, 2) for g, v in groups.items()},
            "stages_s": timings, "stage_peak_rss_mb": peaks}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    colours = dict(zip(GROUPS, plt.get_cmap("tab10").colors))
    for ax, sweep in zip(axes, ("calibration", "model")):
        subset = [r for r in rows if r["sweep"] == sweep]
        targets = list(dict.fromkeys(r["target"] for r in subset))
        # one group of bars per target, a gap between groups
        x = [targets.index(r["target"]) * (1 + max(sum(q["target"] == t for q in subset) for t in targets))
             + [q for q in subset if q["target"] == r["target"]].index(r) for r in subset]
        labels = [str(r["calib_images"]) if sweep == "calibration" else r["variant"] for r in subset]
        bottom = [0.0] * len(subset)
        for group in GROUPS:
            values = [r["groups_s"][group] for r in subset]
            if any(values):
                ax.bar(x, values, bottom=bottom, label=group, color=colours[group])
                bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xticks(x, labels, fontsize=8)
        for target in targets:
            xs = [xi for xi, r in zip(x, subset) if r["target"] == target]
            ax.annotate(f"--target {target}", (sum(xs) / len(xs), 0), xytext=(0, -28), textcoords="offset points",
                        ha="center", fontsize=9, annotation_clip=False)
        ax.set_ylabel("seconds (stage wall time)")
        ax.set_title("compile stages vs calibration images (Lite0)" if sweep == "calibration"
                     else "compile stages vs model (300 calibration images)", fontsize=10)
        twin = ax.twinx()
        for i, target in enumerate(targets):
            pts = [(xi, r["peak_rss_mb"]) for xi, r in zip(x, subset) if r["target"] == target]
            twin.plot(*zip(*pts), "k--o", label="process peak RSS" if i == 0 else None)
        twin.set_ylabel("process peak RSS (MB)")
        twin.set_ylim(bottom=0)
        if sweep == "calibration":
            twin.legend(fontsize=7, loc="upper right")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list[dict]) -> list[list[str]]:
    out = [["sweep", "target", "model", "calib images", *[f"{g} s" for g in GROUPS[:-1]], "total s", "process s",
            "peak RSS MB", "largest RSS rise"]]
    for r in rows:
        calib = f"{r['calib_images']}" + (f" ({r['distinct_calib_images']} distinct)"
                                           if r["distinct_calib_images"] < r["calib_images"] else "")
        out.append([r["sweep"], r["target"], r["model"], calib, *[f"{r['groups_s'][g]:.1f}" for g in GROUPS[:-1]],
                    f"{r['stages_total_s']:.1f}", f"{r['process_s']:.1f}", f"{r['peak_rss_mb']:.0f}",
                    r["largest_rise_stage"]])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--targets", nargs="+", default=["onnx"])
    parser.add_argument("--calib-counts", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--b0-weights", type=Path,
                        default=REPO.parent / "shared/data/weights/efficientnet-b0-swish-se-test.pth")
    parser.add_argument("--one-command", metavar="T1,T2,...",
                        help="time one `compile --target T1,T2,...` of Lite0 instead of the sweeps")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite its section of docs/benchmarks.md")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: redraw the plot and rewrite the doc section from the saved JSON")
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads((args.out / "bench_compile.json").read_text())
        plot(saved["rows"], args.out / "bench_compile.png")
        write_doc(saved["rows"], saved, args.out)
        return 0
    if args.one_command:
        return one_command(args)
    machine_start = machine_info()
    available = len(find_images(args.calib))
    models = [("lite0", "lite0", []), ("b3", "b3 (random weights)", ["--random-weights"])]
    if args.b0_weights.is_file():
        models.insert(1, ("b0", f"b0 ({args.b0_weights.name})", ["--weights", str(args.b0_weights)]))
    else:
        log(f"no B0 test weights at {args.b0_weights}: the model sweep skips B0 (pass --b0-weights)")

    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "bench_compile.partial.json"  # rows so far: a failure late in a long sweep keeps them

    def keep(row: dict) -> None:
        rows.append(row)
        partial.write_text(json.dumps(rows, indent=2) + "\n")
        if row["sweep"] == "calibration" or row["variant"] != "lite0":
            log(f"  {row['process_s']:.0f} s, peak {row['peak_rss_mb']:.0f} MB")

    with tempfile.TemporaryDirectory(prefix="edgeeff-bench-calib-") as scratch:
        for target in args.targets:
            for count in args.calib_counts:
                folder, distinct = calibration_folder(args.calib, count, Path(scratch))
                log(f"lite0 -> {target}, {count} calibration images ({distinct} distinct)")
                row = run_compile("lite0", target, folder, args.val, count, [])
                keep({"sweep": "calibration", "model": "lite0", "distinct_calib_images": distinct, **row})
            for variant, label, extra in models:
                same = next((r for r in rows if r["sweep"] == "calibration" and r["target"] == target
                             and r["variant"] == variant and r["calib_requested"] == 300 and not extra), None)
                if same:  # Lite0 with 300 images was just measured in the calibration sweep
                    keep({**same, "sweep": "model"})
                    continue
                log(f"{label} -> {target}, 300 calibration images")
                row = run_compile(variant, target, args.calib, args.val, 300, extra)
                keep({"sweep": "model", "model": label, "distinct_calib_images": min(300, available), **row})

    print(format_table(table(rows)))
    partial.unlink(missing_ok=True)
    machine = {**machine_info(), "load_average_at_start": machine_start["load_average"]}
    run = {"calib": str(args.calib), "calib_folder_images": available, "val": str(args.val),
           "targets": args.targets, "wall_seconds": round(time.perf_counter() - T0, 1), "machine": machine}
    (args.out / "bench_compile.json").write_text(json.dumps({**run, "rows": rows}, indent=2) + "\n")
    plot(rows, args.out / "bench_compile.png")
    if not args.no_doc:
        write_doc(rows, run, args.out)
    log(f"wrote {args.out / 'bench_compile.json'}, bench_compile.png"
        + ("" if args.no_doc else " and docs/benchmarks.md") + f"; total {run['wall_seconds'] / 60:.1f} min")
    return 0


def one_command(args) -> int:
    """One `compile` of Lite0 for several targets, as a user runs it on a cold cache."""
    targets = args.one_command
    machine_start = machine_info()
    with tempfile.TemporaryDirectory(prefix="edgeeff-bench-one-command-") as tmp:
        # A cold cache, as the bar says: an empty cache folder, so nothing comes from an
        # earlier run, while what one target computes (the FP32 reference, calibration statistics of
        # the same FP32 file) can serve the next target of the same command, as it does for a user.
        env = {**os.environ, "EDGEEFF_CACHE": str(Path(tmp) / "cache")}
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "edgeeff", "compile", "--variant", "lite0", "--target", targets,
               "--calib", str(args.calib), "--val", str(args.val), "--out", str(out), "--quiet"]
        log(" ".join(["edgeeff", *cmd[3:]]))
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
        code = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        folders = []
        for report_path in sorted(out.glob("lite0-*/report.json")):
            report = json.loads(report_path.read_text())
            files = [a["file"] for a in report["artifacts"] if a.get("verified", True)]
            complete = all((report_path.parent / f).is_file() for f in files)
            int8 = next((a for a in report["artifacts"] if a["precision"] == "int8" and a.get("top1") is not None), {})
            folders.append({"target": report["target"], "complete": complete, "files": files,
                            "stages_s": report["timings_s"], "stages_total_s": round(sum(report["timings_s"].values()), 1),
                            "int8_agreement": int8.get("top1_agreement")})
    result = {"command": "edgeeff compile --variant lite0 --target " + targets + " --calib CALIB --val VAL (cold cache)",
              "calib": str(args.calib), "val": str(args.val), "exit_code": code, "wall_s": round(wall, 1),
              "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
              # the command's CPU time, its background processes' included (it waits for them): how
              # much of the two cores' capacity the wall time used
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
              "cpu_pct": round(100 * (usage.ru_utime + usage.ru_stime) / wall),
              "folders": folders,
              "machine": {**machine_info(), "load_average_at_start": machine_start["load_average"]},
              "finished": time.strftime("%Y-%m-%d")}
    rows = [["target", "complete", "stages s", "INT8 agreement %"]] + [
        [f["target"], "yes" if f["complete"] else "NO", f"{f['stages_total_s']:.1f}", str(f["int8_agreement"])]
        for f in folders]
    print(format_table(rows))
    print(f"\nexit {code}, {wall:.0f} s wall, peak RSS {result['peak_rss_mb']:.0f} MB, "
          f"{sum(f['complete'] for f in folders)}/{len(targets.split(','))} folders complete")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_compile_one_command.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_doc:
        m = result["machine"]
        start = "/".join(f"{x:.1f}" for x in m["load_average_at_start"])
        text = "\n".join([
            f"`{result['command']}` ({result['finished']}): exit {code}, **{wall:.0f} s** wall, "
            f"{result['cpu_s']:.0f} s CPU ({result['cpu_pct']}%), peak RSS (the largest process) "
            f"{result['peak_rss_mb']:.0f} MB, {sum(f['complete'] for f in folders)} of {len(targets.split(','))} "
            f"folders complete. Machine: {machine_line(m)} at the end ({start} at the start). The weights, "
            "images and FP32 reference are computed once for all targets; the stages per folder overlap "
            "in that shared work.", "", *markdown_table(rows)])
        doc = REPO / "docs" / "benchmarks.md"
        doc.write_text(replace_section(doc.read_text(), "bench-compile-one-command", text))
    return 0 if code == 0 else 1


def write_doc(rows: list[dict], run: dict, out: Path) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    doc.write_text(replace_section(doc.read_text(), "bench-compile", markdown_section(rows, run, out)))


def findings(rows: list[dict]) -> list[str]:
    """What the table says, computed from it: where the time goes and how it grows."""
    lines = []
    measured = [r for r in rows if r["stages_total_s"]]
    if measured:
        shares = [r["groups_s"]["reference"] / r["stages_total_s"] * 100 for r in measured]
        largest = sum(max(r["groups_s"], key=r["groups_s"].get) == "reference" for r in measured)
        lines.append(f"- The PyTorch FP32 reference pass takes {min(shares):.0f}-{max(shares):.0f}% of the stage "
                     f"time and is the largest stage in {largest} of {len(measured)} rows (a second compile of "
                     "the same model and images takes it from the cache).")
    for target in dict.fromkeys(r["target"] for r in rows):
        sweep = sorted((r for r in rows if r["sweep"] == "calibration" and r["target"] == target),
                       key=lambda r: r["calib_images"])
        if len(sweep) >= 2:
            a, b = sweep[0], sweep[-1]
            per_image = (b["groups_s"]["quantize"] - a["groups_s"]["quantize"]) / (b["calib_images"] - a["calib_images"])
            lines.append(f"- {target}: quantize {a['groups_s']['quantize']:.0f} s with {a['calib_images']} images, "
                         f"{b['groups_s']['quantize']:.0f} s with {b['calib_images']} (about {per_image:.2f} s per "
                         f"extra image); peak RSS {a['peak_rss_mb']:.0f} -> {b['peak_rss_mb']:.0f} MB.")
        models = [r for r in rows if r["sweep"] == "model" and r["target"] == target]
        if models:
            lines.append(f"- {target}, by model: " + ", ".join(
                f"{r['variant']} {r['process_s']:.0f} s / {r['peak_rss_mb']:.0f} MB" for r in models) + ".")
    return lines


def markdown_section(rows: list[dict], run: dict, out: Path) -> str:
    m = run["machine"]
    start = "/".join(f"{x:.1f}" for x in m["load_average_at_start"])
    topped_up = sorted({r["calib_images"] for r in rows if r["distinct_calib_images"] < r["calib_images"]})
    lines = [f"Targets {', '.join(run['targets'])}; {len(rows)} rows, the whole sweep took "
             f"{run['wall_seconds'] / 60:.1f} min. Machine: {machine_line(m)} at the end ({start} at the start).", ""]
    if topped_up:
        lines += [f"The calibration folder holds {run['calib_folder_images']} images: the "
                  f"{', '.join(map(str, topped_up))}-image rows link each of them again until there are "
                  "enough (same photo sizes, so the same decoding cost per image; no validation image is "
                  "calibrated on).", ""]
    lines += ["Seconds per stage group as `compile` reports them (load: weights and images; reference: the "
              "PyTorch FP32 pass over the validation images; evaluate: the FP32 and INT8 artifacts in their "
              "runtime; latency: 20 timed runs each; `rpi` exports no ONNX, its quantize stage converts the PyTorch "
              "model to `.tflite` first; `intel`'s converts the ONNX to IR). Total = the stages; process = the whole command, "
              "Python start-up and report writing included. Peak RSS is the process's; the last column is "
              "the stage that raised it most.", "",
              *markdown_table(table(rows)), "", *findings(rows), "",
              f"![compile stages]({os.path.relpath(out / 'bench_compile.png', REPO / 'docs')})"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
