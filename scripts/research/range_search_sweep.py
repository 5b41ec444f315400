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

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from simulation_setup import compile_start, held_out_arguments, held_out_row, load_held_out, logits_of  # noqa: E402

from edgeeff.quant.optimise import ActivationQuantizers, OptimiseSettings, optimise_int8_model  # noqa: E402
from edgeeff.quant.simulation import simulated_int8  # noqa: E402
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


def main() -> None:
    args = held_out_arguments(__doc__.split("\n\n")[0]).parse_args()
    model, spec, crops, held_crops, simulation = load_held_out(args)
    base, batches, start = compile_start(model, spec, crops, simulation)
    held = list(torch_batches(held_crops, spec, 50))
    reference = logits_of(model, torch.cat(held))
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
                test = logits_of(model, torch.cat(held))
            finally:
                acts.remove()
        rows.append(held_out_row(name, test, reference, search_s=round(seconds, 1), **fields))
        if args.out:  # after every setting: a long sweep cut short keeps what it measured
            args.out.write_text(json.dumps({"target": args.target, "variant": args.variant, "rows": rows},
                                           indent=1) + "\n")


if __name__ == "__main__":
    main()
