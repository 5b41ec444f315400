#!/usr/bin/env python3
"""Scale groups (edgeeff/scale_groups.py) measured on real INT8 .tflite files: 0, 1, 2, ... sites.

For each number of split sites (the best by noise gain first; `all` = every site with a gain of
4 or more, `auto` = what `--scale-groups auto` picks), converts the model with litert-torch,
quantizes it with the rpi target's recipe for that model, runs the INT8 file in LiteRT on the
validation images and measures top-1, agreement with the PyTorch FP32 model and batch-1 latency.
Writes JSON and a plot (the first site's per-channel ranges and how they were grouped; agreement
and latency per configuration), prints a table. The table in docs/variants.md comes from it.

    python scripts/scale_group_sweep.py --weights recovered.pth --calib CALIB --val VAL \\
        [--variant b0] [--sites 0,1,2,auto,6,all] [--out docs/results/scale_groups_b0_hswish.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgeeff import scale_groups  # noqa: E402
from edgeeff.backends import litert  # noqa: E402
from edgeeff.data import imagenet_labels, load_calibration, load_validation  # noqa: E402
from edgeeff.evaluate import TorchRunner, measure_latency, predict_all, score  # noqa: E402
from edgeeff.preprocess import spec_for_variant  # noqa: E402
from edgeeff.profiles import get_recipe, get_target, recipe_for_model  # noqa: E402
from edgeeff.weights import load_model  # noqa: E402

ALL_GAIN = 4.0  # `all`: every site whose split gains at least this


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
    right.set_ylabel("INT8 .tflite top-1 agreement with FP32 (%)")
    for i, r in enumerate(rows):
        right.text(i, r["top1_agreement"] + 0.2, f"{r['top1_agreement']:.1f}%\n{r['latency_ms']:.1f} ms",
                   ha="center", fontsize=8)
    right.tick_params(axis="x", rotation=20)
    right.set_title("sites split: agreement (and latency, batch 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--calib-count", type=int, default=300)
    parser.add_argument("--sites", default="0,1,2,auto,6,all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results"
                        / "scale_groups_b0_hswish_remove.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = spec_for_variant(args.variant)
    nchw, nhwc = spec.with_layout("NCHW", "float32"), spec.with_layout("NHWC", "float32")
    model, _ = load_model(args.variant, args.weights)
    calibration = load_calibration(args.calib, args.calib_count, spec)
    validation = load_validation(args.val, imagenet_labels(), spec)
    batches = list(torch.from_numpy(nchw.to_model_input(calibration.crops)).split(32))
    target = get_target("rpi")
    recipe = recipe_for_model(target, get_recipe(target.calibration), model)
    fp32 = score(predict_all(TorchRunner(model, spec, args.threads), validation.crops, "FP32"), validation.labels)

    widths = scale_groups.channel_widths(model, batches)
    first = scale_groups.sites(model)[0].name
    groups, gain = scale_groups.best_split(widths[first])
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeeff-scale-groups-") as tmp:
        for label, split_args in configurations(args.sites):
            deploy, record = (model, []) if split_args is None else scale_groups.split_for_int8(
                model, batches, **split_args)
            float_path, int8_path = Path(tmp) / "fp32.tflite", Path(tmp) / "int8.tflite"
            with litert._captured_output():
                litert.convert_float(deploy, spec.resolution, float_path)
            litert.quantize_int8(float_path, int8_path, nhwc.to_model_input(calibration.crops), recipe,
                                 threads=args.threads, quiet=True)
            runner = litert.open_runner(int8_path, args.threads, nhwc)
            s = score(predict_all(runner, validation.crops, f"INT8 .tflite, {label}"), validation.labels,
                      fp32.top1_classes)
            latency = measure_latency(runner, calibration.crops[0], args.threads, runs=args.latency_runs)
            rows.append({"config": label, "sites": [r["site"] for r in record],
                         "channels": [r["channels"] for r in record], "top1": round(s.top1, 2),
                         "top1_drop_vs_fp32": round(fp32.top1 - s.top1, 2),
                         "top1_agreement": round(s.top1_agreement, 2), "latency_ms": latency["median"],
                         "latency_p90_ms": latency["p90"]})
            print(f"{label:>18}  top-1 {s.top1:6.2f}  agreement {s.top1_agreement:6.2f}%  "
                  f"{latency['median']:6.2f} ms  {', '.join(rows[-1]['sites']) or '-'}", flush=True)
    result = {"weights": str(args.weights), "variant": args.variant, "recipe": recipe["name"],
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
