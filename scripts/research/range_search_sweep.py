#!/usr/bin/env python3
"""How the range search (quant/optimise.py) should be set: images, factors, passes, judged on
calibration images the compile does not use, never on the validation set.

A compile calibrates on `--calib-count` (300) images evenly spread over `--calib`; the rest of
that folder (200 of the 500 sample photos) is a held-out set the defaults may be chosen on. For
each setting, the search runs as a compile runs it (the starting percentile ranges and the
optimisation images chosen the same way, the target's simulated arithmetic), and the INT8 model
is simulated in PyTorch on the held-out images: top-1 agreement with FP32 and KL divergence
(smoother than agreement on 200 images). Writes JSON, prints a table.

    python scripts/research/range_search_sweep.py --weights B0.pth --calib CALIB --target onnx \\
        [--variant b0] [--out docs/results/range_search_sweep_onnx.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgeeff.backends import backend  # noqa: E402
from edgeeff.data.images import crop_all, find_images, spread_choice  # noqa: E402
from edgeeff.models.distill import kd_loss  # noqa: E402
from edgeeff.models.family import spec_for_variant  # noqa: E402
from edgeeff.models.weights import load_model  # noqa: E402
from edgeeff.profiles import get_recipe, get_target  # noqa: E402
from edgeeff.quant.optimise import ActivationQuantizers, OptimiseSettings, optimise_int8_model  # noqa: E402
from edgeeff.quant.simulation import activation_ranges, simulated_int8  # noqa: E402
from edgeeff.scoring import torch_batches  # noqa: E402

SETTINGS = {  # name -> OptimiseSettings fields (steps=0: ranges only)
    "recipe ranges (no search)": {"search_ranges": False},
    "16 images, 6 factors (0.1 default)": {},
    "32 images, 6 factors": {"search_images": 32},
    "16 images, 10 factors": {"range_factors": (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35)},
    "16 images, 6 factors, 2 passes": {"search_passes": 2},
    "32 images, 10 factors, 2 passes": {"search_images": 32, "search_passes": 2,
                                        "range_factors": (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35)},
}


@torch.no_grad()
def logits(model, batches) -> torch.Tensor:
    return torch.cat([model(x) for x in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--calib-count", type=int, default=300)
    parser.add_argument("--target", default="onnx")
    parser.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = spec_for_variant(args.variant)
    model = load_model(args.variant, args.weights)[0].eval()
    paths = find_images(args.calib)
    used = spread_choice(paths, args.calib_count)
    held_out = [p for p in paths if p not in set(used)]
    _, crops, _ = crop_all(used, spec, "calibration", quiet=True)
    _, held_crops, _ = crop_all(held_out, spec, "held-out", quiet=True)
    simulation = getattr(backend(get_target(args.target).backend), "SIMULATION", {})
    base = OptimiseSettings(**simulation)
    chosen = np.unique(np.linspace(0, len(crops) - 1, min(base.images, len(crops))).round().astype(int))
    batches = list(torch_batches(crops[chosen], spec, base.batch))
    start = activation_ranges(model, batches, get_recipe("percentile"), symmetric=base.symmetric)
    held = list(torch_batches(held_crops, spec, 50))
    reference = logits(model, held)
    rows = []
    for name, fields in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        settings = OptimiseSettings(steps=0, **simulation, **fields)
        began = time.perf_counter()
        _, info = optimise_int8_model(model, torch.cat(batches), start, settings, quiet=True) \
            if settings.search_ranges else (None, {"ranges": start})
        seconds = time.perf_counter() - began
        with simulated_int8(model, start, weights=True, activations=[]):
            acts = ActivationQuantizers.for_settings(model, {**start, **info["ranges"]}, torch.Generator(), settings)
            try:
                test = logits(model, held)
            finally:
                acts.remove()
        agreement = float((test.argmax(1) == reference.argmax(1)).float().mean() * 100)
        rows.append({"setting": name, "held_out_images": len(held_crops), "agreement": round(agreement, 2),
                     "kl": round(float(kd_loss(test, reference, temperature=1.0)), 5),
                     "search_s": round(seconds, 1), **{k: v for k, v in fields.items()}})
        print(f"{name:40s} agreement {agreement:6.2f}  KL {rows[-1]['kl']:.5f}  {seconds:6.1f} s", flush=True)
        if args.out:  # after every setting: a long sweep cut short keeps what it measured
            args.out.write_text(json.dumps({"target": args.target, "variant": args.variant, "rows": rows},
                                           indent=1) + "\n")


if __name__ == "__main__":
    main()
