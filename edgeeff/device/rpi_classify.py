#!/usr/bin/env python3
"""Classify images with an edgeeff .tflite on a Raspberry Pi (or any device with LiteRT).

Needs only numpy, Pillow and a LiteRT interpreter: `pip install ai-edge-litert pillow numpy`
(or the older `tflite-runtime`). It does not use edgeeff: the preprocessing settings are read from
the manifest.json edgeeff wrote beside the model, and the arithmetic is device_preprocess.py,
the very file edgeeff itself preprocesses with, shipped beside this script.

    python3 rpi_classify.py model_int8.tflite photo.jpg
    python3 rpi_classify.py model_int8.tflite photos/ --top 3
    python3 rpi_classify.py model_int8.tflite photo.jpg --time 100 --threads 4

Copy edgeeff's output folder (or at least the model, manifest.json, labels.txt, this script and
device_preprocess.py) to the device together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# edgeeff's preprocessing, imported (not copied) from device_preprocess.py, which sits beside this
# script in the output folder (and in edgeeff/device/, where it ships from). Added explicitly since
# `python -I` omits the script's folder; appended so that nothing there shadows an installed package.
sys.path.append(str(Path(__file__).resolve().parent))
from device_preprocess import (UNREADABLE_ERRORS, crop, from_output_tensor, load_rgb, normalise,  # noqa: E402
                               takes_raw_pixels, to_input_tensor)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def make_interpreter(model: Path, threads: int):
    """LiteRT's interpreter, or tflite_runtime's on older Raspberry Pi OS images."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            sys.exit("rpi_classify: no LiteRT interpreter: pip install ai-edge-litert (or tflite-runtime)")
    interpreter = Interpreter(model_path=str(model), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def model_input(pixels: np.ndarray, pre: dict, detail: dict) -> np.ndarray:
    """uint8 crop (H, W, 3) -> the tensor the model takes (batch of one)."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    x = pixels[None] if takes_raw_pixels(dtype, scale) else normalise(pixels[None], pre["mean"], pre["std"])
    tensor = to_input_tensor(x, dtype, scale, zero_point)
    shape = list(detail["shape"])
    if len(shape) == 4 and shape[1] == 3 and shape[3] != 3:  # NCHW model
        tensor = tensor.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(tensor)


def logits(interpreter, tensor: np.ndarray) -> np.ndarray:
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], tensor)
    interpreter.invoke()
    return from_output_tensor(interpreter.get_tensor(out["index"]).reshape(-1), *out["quantization"])


def list_images(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="the .tflite file")
    parser.add_argument("images", type=Path, nargs="+", help="image files or folders")
    parser.add_argument("--manifest", type=Path, help="edgeeff manifest.json (default: beside the model)")
    parser.add_argument("--labels", type=Path, help="class names, one per line (default: the manifest's)")
    parser.add_argument("--threads", type=int, default=4, help="interpreter threads (default 4: a Pi's cores)")
    parser.add_argument("--top", type=int, default=1, help="classes to print per image")
    parser.add_argument("--time", type=int, default=0, metavar="N",
                        help="also time N invocations of the model (after 10 warm-up runs) and print the median")
    parser.add_argument("--json", type=Path, help="write the predictions (and timing) here as JSON")
    args = parser.parse_args(argv)

    manifest_path = args.manifest or args.model.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    pre = manifest["preprocess"]
    label_info = manifest.get("labels", {})
    labels_path = args.labels or manifest_path.parent / label_info.get("file", "labels.txt")
    names = labels_path.read_text().splitlines() if labels_path.is_file() else []
    offset = int(label_info.get("output_offset", 0))

    interpreter = make_interpreter(args.model, args.threads)
    detail = interpreter.get_input_details()[0]
    results = []
    for path in list_images(args.images):
        try:
            tensor = model_input(crop(load_rgb(path), pre), pre, detail)
        except UNREADABLE_ERRORS as err:
            print(f"{path}: unreadable ({err})", file=sys.stderr)
            continue
        scores = logits(interpreter, tensor)[offset:]
        order = np.argsort(-scores, kind="stable")[:args.top]  # ties: lowest class index, as edgeeff
        top = [{"class": int(c), "label": names[c] if c < len(names) else str(c), "score": float(scores[c])}
               for c in order]
        results.append({"file": str(path), "top": top})
        print(f"{path}: " + ", ".join(f"{t['label']} ({t['score']:.2f})" for t in top))

    report = {"model": str(args.model), "threads": args.threads, "predictions": results}
    if args.time and results:
        tensor = model_input(crop(load_rgb(Path(results[0]["file"])), pre), pre, detail)
        for _ in range(10):
            logits(interpreter, tensor)
        times = []
        for _ in range(args.time):
            start = time.perf_counter()
            logits(interpreter, tensor)
            times.append((time.perf_counter() - start) * 1000)
        report["latency_ms"] = {"median": round(statistics.median(times), 3), "runs": args.time,
                                "threads": args.threads, "batch": 1}
        print(f"{args.model.name}: median {statistics.median(times):.2f} ms over {args.time} runs "
              f"({args.threads} threads, batch 1)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
