#!/usr/bin/env python3
"""Evaluate an edgeeff TensorRT engine on the Jetson, with the manifest's preprocessing.

Copy the edgeeff output folder to the device, build the engine (jetson_build_engine.sh), then:

    python3 jetson_eval_engine.py FOLDER --val VAL [--synsets synsets.txt] [--json out.json]
    python3 jetson_eval_engine.py FOLDER --val VAL --onnx model_qdq.onnx   # CPU path, ONNX Runtime

Needs numpy and Pillow, plus tensorrt and either cuda-python or pycuda for the engine (JetPack
ships tensorrt; `pip install pycuda` or `cuda-python`), or onnxruntime for --onnx. It does not
need edgeeff: the preprocessing is device_preprocess.py, the file edgeeff itself preprocesses
with, which edgeeff ships beside this script (keep the two together).

VAL: an ImageFolder tree whose folder names are class indices, synsets or class names (matched
against --synsets, default the labels.txt beside the model: one class per line in model order,
`<synset> <name>` or the name alone), or a list file of `relative/path label` lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

# The preprocessing is imported, not copied: device_preprocess.py sits beside this script in the
# output folder (and in edgeeff/device/, where it ships from). The folder is added explicitly because
# `python -I` leaves the script's folder off sys.path; appended so it shadows no installed package.
sys.path.append(str(Path(__file__).resolve().parent))
from device_preprocess import preprocess  # noqa: E402  (one image file -> model input, batch of 1)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"}


# --- validation set ------------------------------------------------------------------------------

def validation_items(val: Path, synsets: Path | None = None) -> list[tuple[Path, int]]:
    if val.is_file():
        items = []
        index = _synset_index(synsets)
        for line in val.read_text().splitlines():
            if line.strip():
                rel, label = line.rsplit(None, 1)
                items.append(((val.parent / rel), int(label) if label.isdigit() else index[label]))
        return items
    index = _synset_index(synsets) if synsets else None
    items = []
    for folder in sorted(p for p in val.iterdir() if p.is_dir()):
        label = index.get(folder.name, index.get(_fold(folder.name))) if index else None
        if label is None and folder.name.isdigit():
            label = int(folder.name)
        if label is None:
            raise SystemExit(f"{folder}: folder name is neither a class index nor a class in "
                             f"{synsets or 'the labels'}; pass --synsets FILE (one class per line, model order)")
        items += [(f, label) for f in sorted(folder.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    return items


def _synset_index(path: Path | None) -> dict:
    """Label file -> {synset or class name: index}. Lines are `<synset> <name>` or a name alone
    (edgeeff's labels.txt; names may contain spaces), so both the first word and the whole line
    name the class; folded names (`cabbage_butterfly`) match too. Mirrors edgeeff.data.images."""
    if path is None:
        return {}
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    index = {}
    for keys in ([line.split()[0] for line in lines], lines, [_fold(line) for line in lines]):
        for i, key in enumerate(keys):
            index.setdefault(key, i)
    return index


def _fold(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


# --- runners ---------------------------------------------------------------------------------------

class OnnxRuntimeRunner:
    """The CPU path: the same models in ONNX Runtime (checks preprocessing without TensorRT)."""

    def __init__(self, path: Path, max_batch: int = 8):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.max_batch = max_batch
        self.runtime = f"onnxruntime {ort.__version__}"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.name: x})[0]


class TensorRTRunner:
    """The engine, via tensorrt + (cuda-python or pycuda). TensorRT 8.2 and 10 APIs."""

    def __init__(self, path: Path, max_batch: int):
        import tensorrt as trt

        self.trt, self.max_batch = trt, max_batch
        self.runtime = f"tensorrt {trt.__version__}"
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
        self.context = self.engine.create_execution_context()
        self.v3 = hasattr(self.context, "execute_async_v3")
        if self.v3:
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.inp = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
            self.out = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        else:
            self.inp, self.out = 0, 1
        self.cuda = _Cuda()
        self.d_in = self.d_out = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.v3:
            self.context.set_input_shape(self.inp, x.shape)
            out_shape = tuple(self.context.get_tensor_shape(self.out))
        else:
            self.context.set_binding_shape(self.inp, x.shape)
            out_shape = tuple(self.context.get_binding_shape(self.out))
        out = np.empty(out_shape, np.float32)
        if self.d_in is None:
            self.d_in = self.cuda.alloc(x.nbytes // x.shape[0] * self.max_batch)
            self.d_out = self.cuda.alloc(out.nbytes // out.shape[0] * self.max_batch)
        self.cuda.to_device(self.d_in, x)
        if self.v3:
            self.context.set_tensor_address(self.inp, int(self.d_in))
            self.context.set_tensor_address(self.out, int(self.d_out))
            self.context.execute_async_v3(self.cuda.stream)
        else:
            self.context.execute_async_v2([int(self.d_in), int(self.d_out)], self.cuda.stream)
        self.cuda.to_host(out, self.d_out)
        return out


class _Cuda:
    """Device memory and a stream, from cuda-python or pycuda (whichever is installed)."""

    def __init__(self):
        try:
            from cuda import cudart

            self.rt = cudart
            self.stream = int(cudart.cudaStreamCreate()[1])
        except ImportError:
            import pycuda.autoinit  # noqa: F401
            import pycuda.driver as drv

            self.rt, self.drv = None, drv
            self._stream = drv.Stream()
            self.stream = self._stream.handle

    def alloc(self, nbytes: int):
        if self.rt:
            return int(self.rt.cudaMalloc(nbytes)[1])
        return self.drv.mem_alloc(nbytes)

    def to_device(self, dst, host: np.ndarray):
        if self.rt:
            self.rt.cudaMemcpy(int(dst), host.ctypes.data, host.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice)
        else:
            self.drv.memcpy_htod(dst, host)

    def to_host(self, host: np.ndarray, src):
        if self.rt:
            self.rt.cudaStreamSynchronize(self.stream)
            self.rt.cudaMemcpy(host.ctypes.data, int(src), host.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        else:
            self._stream.synchronize()
            self.drv.memcpy_dtoh(host, src)


# --- evaluation ------------------------------------------------------------------------------------

def evaluate(run, items, spec: dict, batch: int) -> dict:
    correct1 = correct5 = 0
    seconds = 0.0
    predictions = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        x = np.concatenate([preprocess(path, spec) for path, _ in chunk])
        t = time.perf_counter()
        logits = np.asarray(run(x))
        seconds += time.perf_counter() - t
        top5 = np.argsort(-logits, axis=1)[:, :5]
        for (_, label), row in zip(chunk, top5):
            correct1 += int(row[0] == label)
            correct5 += int(label in row)
            predictions.append(int(row[0]))
    n = max(len(items), 1)
    return {"images": len(items), "top1": round(100.0 * correct1 / n, 2), "top5": round(100.0 * correct5 / n, 2),
            "seconds_per_image": round(seconds / n, 5), "predictions": predictions}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the edgeeff output folder (manifest.json)")
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--synsets", type=Path, help="label file, one class per line in model order "
                   "(`<synset> <name>` or the name alone; default: the folder's labels.txt)")
    p.add_argument("--engine", default="model.engine")
    p.add_argument("--onnx", help="run this ONNX file in ONNX Runtime instead of the engine (CPU path)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    manifest = json.loads((args.folder / "manifest.json").read_text())
    spec = manifest["preprocess"]
    build = next((a["build"] for a in manifest["artifacts"] if a.get("build")), {})
    batch = args.batch or int(build.get("max_batch", 1))
    run = (OnnxRuntimeRunner(args.folder / args.onnx, batch) if args.onnx
           else TensorRTRunner(args.folder / args.engine, batch))
    # Default: the labels.txt edgeeff wrote beside the model (class names in model order).
    labels = args.synsets or args.folder / manifest.get("labels", {}).get("file", "labels.txt")
    items = validation_items(args.val, labels if labels.is_file() else None)[:args.limit]
    result = {"model": args.onnx or args.engine, "runtime": run.runtime, **evaluate(run, items, spec, batch)}
    predictions = result.pop("predictions")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**result, "predictions": predictions}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
