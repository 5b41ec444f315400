"""Shared evaluation: run any runner over the validation crops, score it, time it.

A runner is anything with `spec` (its input layout/dtype), `runtime` (name and version),
`predict(inputs) -> logits` and `max_batch`. Backends provide runners for their artifacts;
the scoring below is written once for all of them.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .data.preprocess import PreprocessSpec
from .progress import progress


class Runner(Protocol):
    spec: PreprocessSpec
    runtime: str
    max_batch: int

    def predict(self, inputs: np.ndarray) -> np.ndarray: ...


def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same function, laid out for fast CPU inference: an eval-mode copy with each BatchNorm
    folded into the conv before it and the weights channels-last. PyTorch's CPU convolutions run
    EfficientNet's depthwise convs about twice as fast channels-last, and a folded BatchNorm is one
    pass over the activations less (Lite0 and the B0 test model, 32 images: 1.8-2x; logits within
    1e-5 of the unfolded model's, float rounding). The model given is left as it is."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from .models.builder import ConvBNAct

    fast = copy.deepcopy(model).eval()
    for module in fast.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, torch.nn.BatchNorm2d):
            module.conv, module.bn = fuse_conv_bn_eval(module.conv, module.bn), torch.nn.Identity()
    return fast.to(memory_format=torch.channels_last)


# Images per PyTorch forward call on the CPU, wherever the whole set only needs to pass through
# (the FP32 reference, the scale groups' channel widths): PyTorch's CPU convolutions run 2-3x
# faster on 4 images than on 32, the activations of a few images staying in the cache. Measured
# on this 2-core EPYC, 2 threads: the reference on the 650 val photos, Lite0 13.0 -> 6.5 s, the B0
# test model 15.0 -> 7.4 s; the B0 channel widths on 300 calibration images 13.9 -> 5.0 s (the
# scale-grouped model bit-identical). Fewer than 4 gains nothing and picks other kernels.
TORCH_IMAGES_PER_CALL = 4


class TorchRunner:
    """The FP32 reference: the PyTorch module itself, run as `inference_copy` lays it out."""

    max_batch = TORCH_IMAGES_PER_CALL
    # Part of the reference cache's key: the layout and the images per call move logits by ~1e-6.
    layout = f"batch norm folded, channels-last, {TORCH_IMAGES_PER_CALL} images per call"

    def __init__(self, model: torch.nn.Module, spec: PreprocessSpec, threads: int = 2):
        self.model = inference_copy(model)
        self.spec = spec.with_layout("NCHW", "float32")
        self.runtime = f"torch {torch.__version__.split('+')[0]}"
        self.threads = threads

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            x = torch.from_numpy(inputs).contiguous(memory_format=torch.channels_last)
            return self.model(x).contiguous().numpy()


def torch_batches(crops: np.ndarray, spec: PreprocessSpec, batch: int):
    """uint8 crops (N, H, W, 3) -> the PyTorch model's inputs (NCHW float32), one tensor per
    `batch` images, each made when it is consumed."""
    nchw = spec.with_layout("NCHW", "float32")
    for start in range(0, len(crops), batch):
        yield torch.from_numpy(nchw.to_model_input(crops[start:start + batch]))


# Images per evaluation call are bounded by their size: a runtime holds each call's activations
# while it runs. Measured with ONNX Runtime on B3's FP32 file (300 px, one run, RSS rise): 1 image
# +31 MB, 8 images +294 MB, 38 images +1403 MB, about WORKING_SET_PER_INPUT times the float input
# per image. 26 images of 224 px fit the budget, 300 px (B3) 14, 600 px (B7) 3. B3 at 38-64
# raised compile's peak RSS by 1.3 GB in the FP32 ONNX evaluation alone (docs/benchmarks.md).
EVALUATION_BUDGET_BYTES = 512 * 2**20
WORKING_SET_PER_INPUT = 34


def images_per_call(crops: np.ndarray, max_batch: int, batch: int | None = None) -> int:
    """How many of these crops (N, H, W, 3) one predict() call takes."""
    per_image = WORKING_SET_PER_INPUT * 4 * int(np.prod(crops.shape[1:])) if crops.ndim == 4 else 1
    by_size = max(1, EVALUATION_BUDGET_BYTES // max(1, per_image))
    return max(1, min(batch or max_batch, max_batch, by_size))


def predict_all(runner: Runner, crops: np.ndarray, desc: str = "evaluating", quiet=False,
                batch: int | None = None) -> np.ndarray:
    """Logits for every crop, in order."""
    step = images_per_call(crops, runner.max_batch, batch)
    outputs = []
    for start in progress(range(0, len(crops), step), desc=desc, unit="batch", quiet=quiet):
        chunk = crops[start:start + step]
        outputs.append(np.asarray(runner.predict(runner.spec.to_model_input(chunk)), dtype=np.float32))
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def align_classes(logits: np.ndarray, num_classes: int, label_offset: int | None = None) -> np.ndarray:
    """Drop a leading background class (1001-way TF classifiers) so indices match our labels."""
    offset = label_offset if label_offset is not None else max(0, logits.shape[1] - num_classes)
    return logits[:, offset:offset + num_classes] if offset else logits


@dataclass
class Scores:
    top1: float
    top5: float
    top1_agreement: float | None
    top1_classes: np.ndarray

    def as_dict(self) -> dict:
        d = {"top1": round(self.top1, 2), "top5": round(self.top5, 2)}
        if self.top1_agreement is not None:
            d["top1_agreement"] = round(self.top1_agreement, 2)
        return d


def score(logits: np.ndarray, labels: np.ndarray, reference_top1: np.ndarray | None = None) -> Scores:
    """Top-1/top-5 in percent (0-100), and agreement of top-1 with a reference's top-1."""
    # Stable sort: ties (common in quantized logits) break by class index, the same on every run.
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = order[:, 0]
    top5_hit = (order[:, :5] == labels[:, None]).any(axis=1)
    agreement = None if reference_top1 is None else float((top1 == reference_top1).mean() * 100)
    return Scores(top1=float((top1 == labels).mean() * 100), top5=float(top5_hit.mean() * 100),
                  top1_agreement=agreement, top1_classes=top1)


PER_CLASS_LIMIT = 100  # per-class top-1 is reported for validation sets of at most this many classes


def per_class_top1(labels: np.ndarray, top1: dict[str, np.ndarray], names: list[str]) -> list[dict]:
    """Top-1 (percent) per validation class for each named prediction (the reference and every
    artifact), classes in index order: `index`, `name`, `images`, `top1` {name: percent}."""
    rows = []
    for cls in np.unique(labels):
        mask = labels == cls
        rows.append({"index": int(cls), "name": names[int(cls)] if int(cls) < len(names) else str(int(cls)),
                     "images": int(mask.sum()),
                     "top1": {key: round(100 * float((pred[mask] == cls).mean()), 2) for key, pred in top1.items()}})
    return rows


def top_score_check(logits: np.ndarray, output: dict | None = None) -> dict:
    """How often an artifact's top score cannot be told apart: `saturated`, the image's top logit is
    the largest value the output tensor can hold (an integer output's (qmax - zero_point) * scale;
    a float output never saturates), so every more confident image reads the same; `tied`, the top
    logit equals the runner-up's exactly (both round to one integer), so the top-1 is decided by
    class order and a confidence threshold cannot separate them. Counts over the images, and the
    share (percent) of images with either."""
    ordered = np.sort(logits, axis=1)
    top = ordered[:, -1]
    tied = ordered[:, -1] == ordered[:, -2] if logits.shape[1] > 1 else np.zeros(len(logits), bool)
    ceiling = None
    if output and output.get("scale") and np.dtype(output["dtype"]).kind in "iu":
        ceiling = float((np.iinfo(np.dtype(output["dtype"])).max - output["zero_point"]) * output["scale"])
    # within half a step of the ceiling: the dequantized value is the ceiling, up to float rounding
    saturated = top >= ceiling - output["scale"] / 2 if ceiling is not None else np.zeros(len(logits), bool)
    either = saturated | tied
    return {"images": len(logits), "saturated": int(saturated.sum()), "tied": int(tied.sum()),
            "saturated_or_tied": int(either.sum()),
            "saturated_or_tied_pct": round(100 * float(either.mean()), 2) if len(logits) else None,
            "output_max": None if ceiling is None else round(ceiling, 4),
            "top_score_max": round(float(top.max()), 4) if len(logits) else None}


# Before each turn: a pause, then untimed calls. ONNX Runtime's pool threads keep spinning for a
# while after a call; without the pause the previous file's spinning threads took a core from the
# next file on this 2-core host. Lite0 onnx, idle host, four repeats of 200 calls per file: INT8/FP32
# 0.668-0.755 (FP32 10.5 ms) without; 0.542-0.590 (FP32 5.4 ms, what a device running one model
# sees) with a 50 ms pause and 2 untimed calls (docs/benchmarks.md).
TURN_PAUSE_S = 0.05
TURN_WARMUP = 2


def latency_in_turns(runners: dict[str, Runner], crop: np.ndarray, threads: int, runs: int = 50,
                     per_turn: int = 5, warmup: int = 10, reference: str | None = None,
                     pause_s: float = TURN_PAUSE_S, turn_warmup: int = TURN_WARMUP) -> dict[str, dict]:
    """Batch-1 wall time of several files of one runtime, taking turns: after each file's warm-up,
    every round times `per_turn` calls of each file in turn, until each has `runs` timings. A
    shared host's drift and one runtime's spinning threads then weigh on every file alike, so their
    ratio holds where two sequential measurements can differ by 20-50%. Returns, per name, the
    median, p90 and the spread (p10-p90) in ms, and `ratio_to_fp32` (medians) against `reference`.
    `pause_s` and `turn_warmup`: a pause and untimed calls before each turn, so the previous file's
    spinning runtime threads have settled and this file's caches are warm when its timing starts."""
    inputs = {name: runner.spec.to_model_input(crop[None]) for name, runner in runners.items()}
    for name, runner in runners.items():
        for _ in range(warmup):
            runner.predict(inputs[name])
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(max(1, -(-runs // per_turn))):
        for name, runner in runners.items():
            if pause_s:
                time.sleep(pause_s)
            for _ in range(turn_warmup):
                runner.predict(inputs[name])
            for _ in range(per_turn):
                start = time.perf_counter()
                runner.predict(inputs[name])
                times[name].append((time.perf_counter() - start) * 1000)
    out = {}
    for name, values in times.items():
        p10, p90 = np.percentile(values, [10, 90])
        out[name] = {"median": round(statistics.median(values), 3), "p90": round(float(p90), 3),
                     "spread": [round(float(p10), 3), round(float(p90), 3)], "runs": len(values),
                     "threads": threads, "batch": 1, "host": platform.machine(),
                     "measured": f"in turns with {', '.join(n for n in runners if n != name) or 'nothing'}, "
                                 f"{per_turn} calls each per turn, after {warmup} warm-up calls"
                                 + (f"; each turn after a {1000 * pause_s:.0f} ms pause and {turn_warmup} untimed calls"
                                    if pause_s or turn_warmup else "")}
    if reference in out:
        for name, row in out.items():
            if name != reference:
                row["ratio_to_fp32"] = round(row["median"] / out[reference]["median"], 3)
    return out


def measure_latency(runner: Runner, crop: np.ndarray, threads: int, warmup: int = 10,
                    runs: int = 50) -> dict:
    """Median wall time of batch-1 inference, after warm-up."""
    x = runner.spec.to_model_input(crop[None])
    for _ in range(warmup):
        runner.predict(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.predict(x)
        times.append((time.perf_counter() - start) * 1000)
    return {"median": round(statistics.median(times), 3), "p90": round(float(np.percentile(times, 90)), 3),
            "runs": runs, "threads": threads, "batch": 1, "host": platform.machine()}
