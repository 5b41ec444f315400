"""What the simulation studies in this folder share: their common arguments, the model and the
images they load, and the logits of a model over the evaluation images."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edgeeff.data.images import load_calibration
from edgeeff.models.family import spec_for_variant
from edgeeff.models.weights import load_model
from edgeeff.scoring import torch_batches


def common_arguments(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True, help="images to measure agreement on")
    parser.add_argument("--range-images", type=int, default=64)
    return parser


def load(args) -> tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor, int]:
    """(the FP32 model in eval mode, calibration batches of 16 for the ranges, every evaluation
    image as one NCHW tensor, how many calibration images)."""
    torch.set_num_threads(2)
    spec = spec_for_variant(args.variant)
    model, _ = load_model(args.variant, args.weights)
    model.eval()
    calibration = load_calibration(args.calib, args.range_images, spec)
    evaluation = load_calibration(args.eval, 10_000, spec)
    batches = list(torch_batches(calibration.crops, spec, 16))
    inputs = torch.cat(list(torch_batches(evaluation.crops, spec, 50)))
    return model, batches, inputs, len(calibration)


@torch.no_grad()
def logits_of(model, inputs: torch.Tensor, batch: int = 50) -> torch.Tensor:
    return torch.cat([model(x) for x in inputs.split(batch)])


def held_out_arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments of the studies that judge on the calibration images a compile does not use."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--calib-count", type=int, default=300)
    parser.add_argument("--target", default="onnx")
    parser.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    parser.add_argument("--out", type=Path)
    return parser


def load_held_out(args):
    """(the FP32 model, its preprocessing, the crops a compile calibrates on (`--calib-count` spread
    over `--calib`), the rest of that folder's crops (the held-out set), the target's simulation
    settings) as a compile computes them."""
    from edgeeff.backends import backend
    from edgeeff.data.images import crop_all, find_images, spread_choice
    from edgeeff.profiles import get_target

    torch.set_num_threads(2)
    spec = spec_for_variant(args.variant)
    model = load_model(args.variant, args.weights)[0].eval()
    paths = find_images(args.calib)
    used = spread_choice(paths, args.calib_count)
    held_out = [p for p in paths if p not in set(used)]
    _, crops, _ = crop_all(used, spec, "calibration", quiet=True)
    _, held_crops, _ = crop_all(held_out, spec, "held-out", quiet=True)
    target_backend = backend(get_target(args.target).backend)
    simulation = target_backend.simulation(get_target(args.target), model) \
        if hasattr(target_backend, "simulation") else getattr(target_backend, "SIMULATION", {})
    return model, spec, crops, held_crops, simulation


def compile_start(model, spec, crops, simulation: dict):
    """What a compile's optimisation starts from: its settings for the target, the optimisation
    images (evenly spread over the calibration crops) in batches, and the percentile ranges on them."""
    import numpy as np

    from edgeeff.profiles import get_recipe
    from edgeeff.quant.optimise import OptimiseSettings
    from edgeeff.quant.simulation import activation_ranges

    base = OptimiseSettings(**simulation)
    chosen = np.unique(np.linspace(0, len(crops) - 1, min(base.images, len(crops))).round().astype(int))
    batches = list(torch_batches(crops[chosen], spec, base.batch))
    start = activation_ranges(model, batches, get_recipe("percentile"), symmetric=base.symmetric,
                              asymmetric_points=base.asymmetric_points)
    return base, batches, start


def held_out_row(name: str, test: torch.Tensor, reference: torch.Tensor, **extra) -> dict:
    """One setting's figures on the held-out images (agreement with FP32, KL), printed as a line."""
    from edgeeff.models.distill import kd_loss

    agreement = float((test.argmax(1) == reference.argmax(1)).float().mean() * 100)
    row = {"setting": name, "held_out_images": len(reference), "agreement": round(agreement, 2),
           "kl": round(float(kd_loss(test, reference, temperature=1.0)), 5), **extra}
    print(f"{name:40s} agreement {agreement:6.2f}  KL {row['kl']:.5f}  {extra}", flush=True)
    return row
