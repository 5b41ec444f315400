#!/usr/bin/env python3
"""What `--optimize` gains on each target: the B0 swish + SE test model and Lite0, compiled with
each optimisation setting (off, ranges; rounding on onnx; optionally --max-drop), every INT8
artifact run in its own runtime on the validation images and compared with the FP32 reference on
all images and on each half (even / odd file index, from the report's `top1_changed`, so a
default chosen on one half can be checked on the other). Each cell is a normal `edgeeff compile` (its folder kept under --work).

Writes JSON, a plot (agreement per target and setting) and the generated section of
docs/quantization.md; prints a table. `--with-defaults` also runs scripts/bench_vs_defaults.py
for each model in the same run, so the toolchains' own defaults sit beside these figures.

    python scripts/bench_optimise.py --b0-weights B0.pth --calib CALIB --val VAL \\
        [--models b0 lite0] [--targets onnx intel rpi jetson] [--settings off ranges] [--max-drop 0.3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from edgeeff.pipeline import CompileOptions, compile_model  # noqa: E402
from edgeeff.report.benchmarks import machine_info, machine_line, replace_section  # noqa: E402
from edgeeff.report.contract import format_table, markdown_table  # noqa: E402

T0 = time.perf_counter()
TAKES = {"rounding": {"onnx", "rpi", "android", "ios"}}  # settings only some targets take


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f} s] {message}", file=sys.stderr, flush=True)


def cell(model: str, weights: Path | None, target: str, setting: str, args) -> dict:
    """One compile, then its INT8 artifact against its FP32 artifact on all / even / odd images."""
    optimize, max_drop = {"default": (None, None), "fallback": (None, args.max_drop)}.get(setting, (setting, None))
    out = args.work / f"{model}-{target}-{setting}"
    began = time.perf_counter()
    try:
        _, report = compile_model(CompileOptions(
            variant=model, target=target, out=out, calib=args.calib, val=args.val, weights=weights,
            force=True, quiet=True, optimize=optimize, max_drop=max_drop, latency_runs=20))
    except Exception as err:  # one failed cell is a row that says so, the rest still run
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return {"model": model, "target": target, "setting": setting, "error": first[:200]}
    seconds = time.perf_counter() - began
    folder = next(out.iterdir())
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8" and a.get("top1") is not None)
    images = report["dataset"]["images"]
    changed = set(int8["top1_changed"]["indices"])  # against the FP32 reference, as the report's agreement
    half = {parity: [i for i in range(parity, images, 2)] for parity in (0, 1)}
    agree = {parity: round(100 * (1 - len(changed & set(ids)) / len(ids)), 2) for parity, ids in half.items()}
    quant = int8.get("quantization", {})
    return {"model": model, "target": target, "setting": setting, "file": int8["file"],
            "runtime": int8["runtime"], "agreement": int8["top1_agreement"],
            "agreement_even": agree[0], "agreement_odd": agree[1],
            "top1": int8["top1"], "top1_drop": int8["top1_drop"], "reference_top1": report["reference"]["top1"],
            "latency_ms": int8["latency_ms"].get("median"), "kept_float": len(int8.get("kept_float", [])),
            "quantizable_layers": int8.get("quantizable_layers"),
            "optimise_s": report["timings_s"].get("optimise"), "compile_s": round(seconds, 1),
            "optimisation": (quant.get("optimisation") or {}).get("method", "none"), "folder": str(folder)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model and "agreement" in r]
        targets = list(dict.fromkeys(r["target"] for r in mine))
        settings = list(dict.fromkeys(r["setting"] for r in mine))
        width = 0.8 / max(1, len(settings))
        for k, setting in enumerate(settings):
            xs = [i + k * width for i, t in enumerate(targets)]
            ys = [next((r["agreement"] for r in mine if r["target"] == t and r["setting"] == setting), 0) for t in targets]
            ax.bar(xs, ys, width, label=setting)
        ax.set_xticks([i + width * (len(settings) - 1) / 2 for i in range(len(targets))], targets)
        ax.set_ylim(min([r["agreement"] for r in mine] + [90]) - 2, 100)
        ax.axhline(95 if model == "b0" else 99, color="black", linestyle="--", linewidth=0.8)
        ax.set_title(f"{model}: INT8 top-1 agreement with FP32 (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows: list[dict], run: dict) -> str:
    table = [["model", "target", "setting", "agreement (all / even / odd)", "top-1 (drop)", "float layers",
              "optimise s", "compile s"]]
    for r in rows:
        if "error" in r:
            table.append([r["model"], r["target"], r["setting"], f"failed: {r['error']}", "", "", "", ""])
            continue
        table.append([r["model"], r["target"], r["setting"],
                      f"{r['agreement']:.2f} / {r['agreement_even']:.2f} / {r['agreement_odd']:.2f}",
                      f"{r['top1']:.2f} ({r['top1_drop']:+.2f})", f"{r['kept_float']}/{r['quantizable_layers']}",
                      f"{r['optimise_s'] or 0:.0f}", f"{r['compile_s']:.0f}"])
    return (f"Generated by `scripts/bench_optimise.py` ({run['finished']}): {run['calib_images']} calibration "
            f"images from `{run['calib']}`, agreement with the FP32 artifact on the {run['val']} images "
            f"(all / even / odd file index). {machine_line(run['machine'])}. Compile times include "
            f"evaluation and are from a shared host.\n\n" + "\n".join(markdown_table(table)) +
            "\n\n![agreement per target and setting](results/bench_optimise.png)\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--b0-weights", type=Path, help="the B0 swish + SE test model (lukemelas layout)")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["b0", "lite0"])
    parser.add_argument("--targets", nargs="+", default=["onnx", "intel", "rpi", "jetson"])
    parser.add_argument("--settings", nargs="+", default=["default", "off", "ranges"],
                        help="default (the target's own), off, ranges, refine, rounding (onnx, LiteRT), fallback "
                             "(ranges + --max-drop)")
    parser.add_argument("--settings-for", nargs="*", default=[], metavar="MODEL=S1,S2",
                        help="other settings for one model, e.g. lite0=off (ReLU6 models default to off)")
    parser.add_argument("--max-drop", type=float, default=0.3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeeff-bench-optimise"))
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "bench_optimise.json")
    parser.add_argument("--with-defaults", action="store_true", help="also run scripts/bench_vs_defaults.py per model")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    if "b0" in args.models and args.b0_weights is None:
        parser.error("--b0-weights FILE is needed for the b0 model (or leave b0 out of --models)")
    settings_for = {m: s.split(",") for m, s in (item.split("=", 1) for item in args.settings_for)}
    rows = []
    for model in args.models:
        weights = args.b0_weights if model == "b0" else None
        for target in args.targets:
            for setting in settings_for.get(model, args.settings):
                if setting in TAKES and target not in TAKES[setting]:
                    continue
                log(f"{model} {target} {setting}: compiling")
                rows.append(cell(model, weights, target, setting, args))
                r = rows[-1]
                log(f"{model} {target} {setting}: " + (f"failed: {r['error']}" if "error" in r else
                    f"agreement {r['agreement']:.2f} ({r['agreement_even']:.2f} / {r['agreement_odd']:.2f}), "
                    f"drop {r['top1_drop']:+.2f}, {r['compile_s']:.0f} s"))
        if args.with_defaults:
            log(f"{model}: scripts/bench_vs_defaults.py")
            cmd = [sys.executable, str(REPO / "scripts" / "bench_vs_defaults.py"), "--variant", model,
                   "--calib", str(args.calib), "--val", str(args.val)] + (["--weights", str(weights)] if weights else [])
            subprocess.run(cmd, check=False)
    run = {"calib": str(args.calib), "calib_images": 300, "val": str(args.val), "machine": machine_info(),
           "finished": time.strftime("%Y-%m-%d"), "wall_s": round(time.perf_counter() - T0)}
    print(format_table([["model", "target", "setting", "agree%", "even", "odd", "drop", "compile s"]] +
                       [[r["model"], r["target"], r["setting"], *([f"{r['agreement']:.2f}", f"{r['agreement_even']:.2f}",
                         f"{r['agreement_odd']:.2f}", f"{r['top1_drop']:+.2f}", f"{r['compile_s']:.0f}"]
                         if "error" not in r else ["failed", "", "", "", ""])] for r in rows]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"run": run, "rows": rows}, indent=1) + "\n")
    plot(rows, args.json.with_suffix(".png"))
    if not args.no_doc:
        doc = REPO / "docs" / "quantization.md"
        doc.write_text(replace_section(doc.read_text(), "bench-optimise", markdown(rows, run)))
    log(f"wrote {args.json}, {args.json.with_suffix('.png').name}" + ("" if args.no_doc else ", docs/quantization.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
