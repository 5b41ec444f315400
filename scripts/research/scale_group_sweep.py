#!/usr/bin/env python3
"""Scale groups (edgeeff/quant/scale_groups.py) measured on real INT8 files: 0, 1, 2, ... sites.

For each number of split sites (the best by noise gain first; `all` = every site with a gain of
4 or more, `auto` = what `--scale-groups auto` picks), builds the INT8 file the target's backend
ships (`--target rpi`: litert-torch conversion, ai-edge-quantizer with the rpi recipe for that
model, run in LiteRT; `--target onnx`: ONNX export, ONNX Runtime's quantizer with the onnx
target's settings, run in ONNX Runtime), runs it on the validation images and measures top-1,
agreement with the PyTorch FP32 model and batch-1 latency. Latency is measured last, for all
configurations in turns (LATENCY_ROUNDS rounds of a few runs each), so that this host's drift
in speed, which moves one model's median by 30% between minutes, hits every configuration alike.
Writes JSON and a plot (the first site's per-channel ranges and how they were grouped; agreement
and latency per configuration), prints a table. The tables in docs/variants.md come from it.

    python scripts/research/scale_group_sweep.py --weights recovered.pth --calib CALIB --val VAL \\
        [--target rpi|onnx] [--variant b0] [--sites 0,1,2,auto,6,all] [--out docs/results/....json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgeeff.backends import litert  # noqa: E402
from edgeeff.backends import onnxruntime as ort_backend  # noqa: E402
from edgeeff.data.images import imagenet_labels, load_calibration, load_validation  # noqa: E402
from edgeeff.models.export import export_onnx  # noqa: E402
from edgeeff.models.family import spec_for_variant  # noqa: E402
from edgeeff.models.weights import load_model  # noqa: E402
from edgeeff.profiles import get_recipe, get_target, recipe_for_model  # noqa: E402
from edgeeff.quant import scale_groups  # noqa: E402
from edgeeff.scoring import TorchRunner, predict_all, score, torch_batches  # noqa: E402
from edgeeff.scoring import latency_in_turns as scoring_latency_in_turns  # noqa: E402

ALL_GAIN = 4.0  # `all`: every site whose split gains at least this
LATENCY_ROUNDS = 10  # latency: each configuration runs latency_runs / LATENCY_ROUNDS times per round
TURN_PAUSE_S = 0.1   # before each turn (latency_in_turns)


def configurations(names: str) -> list[tuple[str, dict]]:
    """--sites entries -> (label, split_for_int8 keyword arguments or None for no split)."""
    out = []
    for name in names.split(","):
        if name == "0":
            out.append(("none", None))
        elif name == "auto":
            out.append(("auto", {}))
        elif name == "all":
            out.append((f"all (gain >= {ALL_GAIN:g})", {"min_gain": ALL_GAIN}))
        else:
            out.append((f"best {int(name)}", {"min_gain": ALL_GAIN, "max_sites": int(name)}))
    return out


def build_int8(target: str, deploy, spec, calibration, recipe: dict, quant: dict, folder: Path, threads: int):
    """The INT8 file the target's backend ships, for the (possibly split) model; and its runner."""
    if target == "rpi":
        nhwc = spec.with_layout("NHWC", "float32")
        float_path, int8_path = folder / "fp32.tflite", folder / "int8.tflite"
        with litert._captured_output():
            litert.convert_float(deploy, spec.resolution, float_path)
        litert.quantize_int8(float_path, int8_path, nhwc.to_model_input(calibration.crops), recipe,
                             threads=threads, quiet=True)
        return litert.open_runner(int8_path, threads, nhwc)
    nchw = spec.with_layout("NCHW", "float32")
    float_path, int8_path = folder / "fp32.onnx", folder / "int8.onnx"
    export_onnx(deploy, spec.resolution, float_path)
    ort_backend.quantize(float_path, int8_path, nchw.to_model_input(calibration.crops), recipe, quant, quiet=True)
    return ort_backend.open_runner(int8_path, threads, nchw)


def latency_in_turns(runners: list, crop: np.ndarray, runs: int) -> list[dict]:
    """Batch-1 latency of each runner, measured in LATENCY_ROUNDS turns (median and p90 over all
    its runs; edgeeff.scoring.latency_in_turns). Each turn starts after a pause and three warm-up
    runs: ONNX Runtime's threads spin for a while after a run, and without the pause the last
    session's spinning threads slowed the next one's first runs (p90 12-14 ms against medians of
    6-8 ms; with the pause, p90 within 0.3 ms of the median)."""
    per_turn = max(1, runs // LATENCY_ROUNDS)
    measured = scoring_latency_in_turns({str(i): r for i, r in enumerate(runners)}, crop, threads=0, runs=per_turn * LATENCY_ROUNDS,
                                        per_turn=per_turn, warmup=0, pause_s=TURN_PAUSE_S, turn_warmup=3)
    return [{k: measured[str(i)][k] for k in ("median", "p90", "runs")} for i in range(len(runners))]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    stem = result["first_site"]
    widths = np.array(stem["widths"])
    order = np.argsort(-widths, kind="stable")
    wide = set(stem["groups"][0])
    left.bar(range(len(order)), widths[order], color=["tab:red" if c in wide else "tab:blue" for c in order])
    left.set_xlabel(f"{stem['site']} output channel (sorted by range)")
    left.set_ylabel("range on the calibration images")
    left.set_title(f"{stem['site']}: two INT8 scale groups (red, blue)")
    rows = result["rows"]
    labels = [r["config"] for r in rows]
    right.bar(labels, [r["top1_agreement"] for r in rows], color="tab:green")
    low = min(r["top1_agreement"] for r in rows)
    right.set_ylim(low - 2, 100)
    right.set_ylabel(f"INT8 {result['int8_format']} top-1 agreement with FP32 (%)")
    for i, r in enumerate(rows):
        right.text(i, r["top1_agreement"] + 0.2, f"{r['top1_agreement']:.1f}%\n{r['latency_ms']:.1f} ms",
                   ha="center", fontsize=8)
    right.tick_params(axis="x", rotation=20)
    right.set_title(f"sites split: agreement (and latency, batch 1, {result['runtime']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--target", choices=("rpi", "onnx"), default="rpi",
                        help="whose INT8 file to build and run: rpi (.tflite, LiteRT) or onnx (QDQ, ONNX Runtime)")
    parser.add_argument("--calib-count", type=int, default=300)
    parser.add_argument("--sites", default="0,1,2,auto,6,all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "results"
                        / "scale_groups_b0_hswish_remove.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = spec_for_variant(args.variant)
    model, _ = load_model(args.variant, args.weights)
    calibration = load_calibration(args.calib, args.calib_count, spec)
    validation = load_validation(args.val, imagenet_labels(), spec)
    batches = list(torch_batches(calibration.crops, spec, 32))
    target = get_target(args.target)
    recipe = recipe_for_model(target, get_recipe(target.calibration), model)
    int8_format = ".tflite" if args.target == "rpi" else "QDQ ONNX"
    fp32 = score(predict_all(TorchRunner(model, spec, args.threads), validation.crops, "FP32"), validation.labels)

    widths = scale_groups.channel_widths(model, batches)
    first = scale_groups.sites(model)[0].name
    groups, gain = scale_groups.best_split(widths[first])
    rows, runners = [], []
    with tempfile.TemporaryDirectory(prefix="edgeeff-scale-groups-") as tmp:
        for index, (label, split_args) in enumerate(configurations(args.sites)):
            deploy, record = (model, []) if split_args is None else scale_groups.split_for_int8(
                model, batches, **split_args)
            folder = Path(tmp) / str(index)
            folder.mkdir()
            runner = build_int8(args.target, deploy, spec, calibration, recipe, dict(target.quantization),
                                folder, args.threads)
            s = score(predict_all(runner, validation.crops, f"INT8 {int8_format}, {label}"), validation.labels,
                      fp32.top1_classes)
            runners.append(runner)
            rows.append({"config": label, "sites": [r["site"] for r in record],
                         "channels": [r["channels"] for r in record], "top1": round(s.top1, 2),
                         "top1_drop_vs_fp32": round(fp32.top1 - s.top1, 2),
                         "top1_agreement": round(s.top1_agreement, 2)})
        for row, latency in zip(rows, latency_in_turns(runners, calibration.crops[0], args.latency_runs)):
            row.update(latency_ms=latency["median"], latency_p90_ms=latency["p90"])
            print(f"{row['config']:>18}  top-1 {row['top1']:6.2f}  agreement {row['top1_agreement']:6.2f}%  "
                  f"{row['latency_ms']:6.2f} ms  {', '.join(row['sites']) or '-'}", flush=True)
        runtime = runners[0].runtime
    result = {"weights": str(args.weights), "variant": args.variant, "target": args.target,
              "int8_format": int8_format, "runtime": runtime, "recipe": recipe["name"],
              "calibration_images": len(calibration), "validation_images": len(validation),
              "fp32_top1": round(fp32.top1, 2), "threads": args.threads, "rows": rows,
              "first_site": {"site": first, "widths": [round(float(w), 3) for w in widths[first]],
                             "groups": [g.tolist() for g in groups], "noise_gain": round(gain, 2)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
