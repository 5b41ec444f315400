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
