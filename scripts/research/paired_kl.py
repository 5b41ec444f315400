#!/usr/bin/env python3
"""Two compiles of the same model compared image by image: is B's INT8 file closer to FP32 than A's?

On 200 images one image is half a point of agreement, so two files whose agreements differ by one
or two images cannot be told apart by agreement alone. KL(FP32 || INT8) of the logits, averaged over
the images, moves with every image; this script runs both folders' INT8 files in their own runtime
(as `edgeeff eval` does, each with its folder's preprocessing) on the same images, computes each
image's KL to the PyTorch FP32 model, and reports the mean of each, the ratio B / A with a 95%
paired bootstrap interval (5000 resamples of the images, seed 0), and the images whose top-1
agreement differs between the two files.

    python scripts/research/paired_kl.py --weights B0.pth --images HELDOUT A_FOLDER B_FOLDER

Used for the "Bias correction after the optimisation" measurement in docs/quantization.md, on the
200 calibration images a compile does not use (never on val/, where defaults are only judged).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgeeff.backends import backend_for_file  # noqa: E402
from edgeeff.data.images import crop_all, find_images  # noqa: E402
from edgeeff.evaluation_cli import spec_from_manifest  # noqa: E402
from edgeeff.models.family import spec_for_variant  # noqa: E402
from edgeeff.models.weights import load_model  # noqa: E402
from edgeeff.scoring import TorchRunner, align_classes, predict_all  # noqa: E402

INT8_FILES = ("model_int8.onnx", "model_qdq.onnx", "model_int8.tflite", "model_int8.xml")


def int8_logits(folder: Path, paths: list[Path], classes: int) -> np.ndarray:
    name = next(n for n in INT8_FILES if (folder / n).exists())
    spec = spec_from_manifest(folder / "manifest.json", name)
    _, crops, _ = crop_all(paths, spec, "images", quiet=True)
    runner = backend_for_file(folder / name).open_runner(folder / name, 2, spec)
    return align_classes(predict_all(runner, crops, name, True), classes)


def per_image_kl(reference: np.ndarray, logits: np.ndarray) -> np.ndarray:
    p = torch.log_softmax(torch.tensor(reference, dtype=torch.float64), 1)
    q = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), 1)
    return (p.exp() * (p - q)).sum(1).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs=2, help="A (the baseline) and B: compiled output folders")
    parser.add_argument("--images", type=Path, required=True, help="images both files are run on")
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    paths = find_images(args.images)
    spec = spec_for_variant(args.variant)
    model, _ = load_model(args.variant, args.weights)
    _, crops, _ = crop_all(paths, spec, "images", quiet=True)
    reference = predict_all(TorchRunner(model.eval(), spec, 2), crops, "FP32 reference", True)
    a, b = (int8_logits(f, paths, reference.shape[1]) for f in args.folders)
    kl_a, kl_b = per_image_kl(reference, a), per_image_kl(reference, b)
    resamples = np.random.default_rng(0).integers(0, len(paths), (5000, len(paths)))
    ratios = kl_b[resamples].mean(1) / kl_a[resamples].mean(1)
    top1 = reference.argmax(1)
    agree_a, agree_b = a.argmax(1) == top1, b.argmax(1) == top1
    result = {"a": str(args.folders[0]), "b": str(args.folders[1]), "images": len(paths),
              "kl_a": round(float(kl_a.mean()), 4), "kl_b": round(float(kl_b.mean()), 4),
              "kl_ratio_b_over_a": round(float(kl_b.mean() / kl_a.mean()), 3),
              "kl_ratio_ci95": [round(float(np.percentile(ratios, q)), 3) for q in (2.5, 97.5)],
              "images_where_b_has_lower_kl": int((kl_b < kl_a).sum()),
              "agreement_a": round(100 * float(agree_a.mean()), 2), "agreement_b": round(100 * float(agree_b.mean()), 2),
              "agree_only_a": int((agree_a & ~agree_b).sum()), "agree_only_b": int((~agree_a & agree_b).sum())}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
