#!/usr/bin/env python3
"""Learning every activation range at once against the FP32 logits (optimise.refine_ranges), after
or instead of the unit-by-unit search, judged in simulation on calibration images the compile does
not use (never on the validation set).

A compile calibrates on `--calib-count` (300) images evenly spread over `--calib`; the rest of that
folder (200 of the 500 sample photos) is the held-out set. Per setting: the starting ranges as a
compile computes them (percentile 99.99 over the 64 optimisation images), optionally the range
search, then `refine_ranges` for `steps` mini-batches on the optimisation images or on all the
calibration images; the INT8 model simulated with the target's arithmetic on the held-out images:
top-1 agreement with FP32 and KL divergence. Writes JSON, prints a table.

    python scripts/research/range_refinement_sim.py --weights B0.pth --calib CALIB --target onnx \\
        [--out docs/results/range_refinement_sim_b0_onnx.json]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from simulation_setup import compile_start, held_out_arguments, held_out_row, load_held_out, logits_of  # noqa: E402

from edgeeff.quant.optimise import ActivationQuantizers, OptimiseSettings, optimise_int8_model, refine_ranges  # noqa: E402
from edgeeff.quant.simulation import simulated_int8  # noqa: E402
from edgeeff.scoring import torch_batches  # noqa: E402

# name -> (start from the search?, refinement images: "optimisation" (64) | "all" (300), steps, lr, batch)
SETTINGS = {  # the learning rate decays to 0 over the steps (cosine)
    "search (today)": (True, None, 0, 0.0, 16),
    "search + refine 64 img, 40 steps": (True, "optimisation", 40, 1e-2, 16),
    "search + refine 64 img, 80 steps": (True, "optimisation", 80, 1e-2, 16),
    "search + refine 300 img, 80 steps": (True, "all", 80, 1e-2, 16),
    "recipe + refine 300 img, 80 steps": (False, "all", 80, 1e-2, 16),
}


def main() -> None:
    args = held_out_arguments(__doc__.split("\n\n")[0]).parse_args()
    model, spec, crops, held_crops, simulation = load_held_out(args)
    for p in model.parameters():  # only the range factors learn
        p.requires_grad_(False)
    base, batches, start = compile_start(model, spec, crops, simulation)
    searched = {**start, **optimise_int8_model(model, torch.cat(batches), start, OptimiseSettings(steps=0, **simulation),
                                               quiet=True)[1]["ranges"]}
    optimisation_images = torch.cat(batches)
    all_images = torch.cat(list(torch_batches(crops, spec, 50)))
    held = list(torch_batches(held_crops, spec, 50))
    reference = logits_of(model, torch.cat(held))
    fp32_logits = {"optimisation": logits_of(model, optimisation_images), "all": logits_of(model, all_images)}
    rows = []
    for name, (from_search, images_name, steps, lr, batch) in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        began = time.perf_counter()
        losses = []
        with simulated_int8(model, start, weights=True, activations=[]):
            acts = ActivationQuantizers.for_settings(model, searched if from_search else start, torch.Generator(), base)
            try:
                if steps:
                    images = optimisation_images if images_name == "optimisation" else all_images
                    losses = refine_ranges(model, acts, images, fp32_logits[images_name], steps, batch,
                                           torch.Generator().manual_seed(0), lr)
                seconds = time.perf_counter() - began
                test = logits_of(model, torch.cat(held))
            finally:
                acts.remove()
        rows.append(held_out_row(name, test, reference, refine_s=round(seconds, 1),
                                 loss_first_last=[round(x, 4) for x in losses[:1] + losses[-1:]]))
        if args.out:
            args.out.write_text(json.dumps({"target": args.target, "variant": args.variant, "rows": rows},
                                           indent=1) + "\n")


if __name__ == "__main__":
    main()
