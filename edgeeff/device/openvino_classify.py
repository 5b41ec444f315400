#!/usr/bin/env python3
"""Classify images with an edgeeff OpenVINO IR on the device: needs only openvino, numpy, Pillow.

    python openvino_classify.py OUT/lite0-intel/model_int8.xml cat.jpg dog.png [--device CPU] [--json]

Reads manifest.json and labels.txt from the IR's folder (copy the whole folder to the device).
The IR takes uint8 RGB NHWC crops: mean/std and the transpose are inside it, so the host only
decodes, resizes the shorter side and centre-crops, exactly as edgeeff did when it measured the
accuracy in report.json: with device_preprocess.py, the file edgeeff itself preprocesses with,
which edgeeff ships beside this script. Deliberately does not import edgeeff.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import openvino as ov

# edgeeff's own preprocessing file, not a copy: beside this script in the output folder (and in
# edgeeff/device/, where it ships from). Explicit: `python -I` leaves the script's folder off sys.path.
sys.path.append(str(Path(__file__).resolve().parent))
from device_preprocess import load_rgb  # noqa: E402
from device_preprocess import crop as crop_rgb  # noqa: E402


def crop(path: Path, pre: dict) -> np.ndarray:
    """Decoded as edgeeff does (16-bit, alpha over white...), shorter side to resize_size, centre
    crop: uint8 (H, W, 3), what the IR takes."""
    return crop_rgb(load_rgb(path), pre)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model_int8.xml or model_fp32.xml (the .bin beside it)")
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--device", default="CPU", help="CPU, GPU or NPU")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object per image (with logits)")
    args = parser.parse_args()

    folder = args.model.parent
    manifest = json.loads((folder / "manifest.json").read_text())
    pre = manifest["preprocess"]
    labels = (folder / manifest["labels"]["file"]).read_text().splitlines()
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if args.device == "CPU":  # the settings edgeeff measured with: f32 for the float parts, fixed threads
        config.update({"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": "f32"})
    compiled = ov.Core().compile_model(str(args.model), args.device, config)
    request = compiled.create_infer_request()
    for path in args.images:
        logits = request.infer({0: crop(path, pre)[None]})[0][0].astype(np.float32)
        top5 = np.argsort(-logits, kind="stable")[:5]
        if args.json:
            print(json.dumps({"image": str(path), "top5": top5.tolist(), "logits": logits.tolist()}))
        else:
            print(f"{path}: " + ", ".join(f"{labels[i]} ({logits[i]:.2f})" for i in top5[:3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
