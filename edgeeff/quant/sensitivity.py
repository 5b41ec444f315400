"""Per-layer quantization sensitivity, and the --max-drop fallback that keeps layers in float.

"Quantized alone": every other layer of the INT8 artifact is kept in float (the backend's own
float-keeping edit, see edgeeff/quant/layers.py and each backend's `float_variants`), so the only
quantization left is this layer's own (its weights, its input and output activations, with the
artifact's own scales). Its error is the SQNR of the logits against the FP32 model on calibration
images (higher is better), and for the worst and best few layers the top-1 agreement with FP32
on validation images too. Measuring in the artifact's own runtime matters: the same layer can be
fine in one backend and broken in another, which points at the converter, not the model.

The fallback walks that ranking: while the artifact is over the budget, the next most sensitive
layer goes to float, up to a limit, and each step is evaluated in the real runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..progress import progress, say
from ..scoring import predict_all, score
from .layers import Layer, sqnr_db

DEFAULT_IMAGES = 32  # calibration images per SQNR measurement: enough to rank, cheap to repeat
DEFAULT_CHECKED = 3  # worst and best layers also scored by agreement on validation images...
DEFAULT_VAL_IMAGES = 200  # ...on at most this many of them (spread over the set)
DEFAULT_FLOAT_FRACTION = 0.10  # fallback limit: at most this share of layers in float


@dataclass
class LayerScore:
    layer: Layer
    sqnr_db: float
    top1_agreement: float | None = None

    position: int = 0  # index in graph order

    def as_dict(self, rank: int) -> dict:
        row = {"rank": rank, "position": self.position, **self.layer.as_dict(), "sqnr_db": round(self.sqnr_db, 2)}
        if self.top1_agreement is not None:
            row["top1_agreement_alone"] = round(self.top1_agreement, 2)
        return row


@dataclass
class Sensitivity:
    backend: str
    artifact: str
    images: int
    layers: list[LayerScore]  # worst (lowest SQNR) first
    all_quantized_sqnr_db: float
    val_images: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "artifact": self.artifact, "metric": "logits SQNR vs FP32, layer quantized alone",
                "calibration_images": self.images, "validation_images_for_agreement": self.val_images,
                "all_quantized_sqnr_db": round(self.all_quantized_sqnr_db, 2), "seconds": round(self.seconds, 1),
                "quantizable_layers": len(self.layers),
                "layers": [s.as_dict(i + 1) for i, s in enumerate(self.layers)], "notes": self.notes}

    def order(self) -> list[str]:
        return [s.layer.name for s in self.layers]


def run_batches(runner, inputs: np.ndarray) -> np.ndarray:
    """The runner's logits on `inputs`, in batches of at most 16 (what every measurement here uses)."""
    batch = max(1, min(getattr(runner, "max_batch", 16), 16))
    return np.concatenate([runner.predict(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])


def rank_layers(variants, layers: list[Layer], calib_crops: np.ndarray, val_crops: np.ndarray | None = None,
                ref_val_top1: np.ndarray | None = None, checked: int = DEFAULT_CHECKED,
                quiet: bool = False, evaluate: Callable | None = None) -> Sensitivity:
    """`variants` is a backend's float_variants(...) object: .runner(float_layers) -> a runner of
    the artifact with those layers in float, .spec (its input), .backend, .artifact.

    `evaluate(variants, float_sets, inputs, say)`, when given, returns the logits for each set
    of float layers in order, or None to leave them to this loop: edgeeff.distributed.RayLayerMap
    runs them as Ray tasks (`--workers N`). Scoring and sorting stay here, so the ranking is the
    serial one whichever ran the layers."""
    start = time.perf_counter()
    inputs = variants.spec.to_model_input(calib_crops)
    names = [layer.name for layer in layers]
    reference = run_batches(variants.runner(names), inputs)  # everything float: the artifact's own FP32
    everything = sqnr_db(reference, run_batches(variants.runner([]), inputs))
    # Layer i alone quantized = every other layer kept in float.
    float_sets = [[n for n in names if n != layer.name] for layer in layers]
    fanned = evaluate(variants, float_sets, inputs, None if quiet else say) if evaluate is not None else None
    if fanned is None:
        fanned = (run_batches(variants.runner(kept), inputs) for kept in float_sets)
    scores = []
    for position, (layer, logits) in enumerate(progress(
            zip(layers, fanned), f"sensitivity ({variants.backend}): each layer quantized alone", "layer", quiet,
            total=len(layers))):
        scores.append(LayerScore(layer, sqnr_db(reference, logits), position=position))
    scores.sort(key=lambda s: (s.sqnr_db, s.layer.name))
    val_images = 0
    if val_crops is not None and ref_val_top1 is not None and checked > 0:
        pick = slice(None, None, max(1, len(val_crops) // DEFAULT_VAL_IMAGES))
        val_inputs = variants.spec.to_model_input(val_crops[pick][:DEFAULT_VAL_IMAGES])
        ref_val_top1 = ref_val_top1[pick][:DEFAULT_VAL_IMAGES]
        val_images = len(val_inputs)
        picked = scores[:checked] + [s for s in scores[-checked:] if s not in scores[:checked]]
        for s in progress(picked, "sensitivity: agreement of the worst and best layers", "layer", quiet):
            logits = run_batches(variants.runner([n for n in names if n != s.layer.name]), val_inputs)
            s.top1_agreement = score(logits, np.zeros(len(logits), np.int64), ref_val_top1).top1_agreement
    return Sensitivity(variants.backend, variants.artifact, len(inputs), scores, everything, val_images,
                       time.perf_counter() - start)


@dataclass
class FallbackStep:
    kept_float: list[str]
    top1: float
    top1_drop: float
    top1_agreement: float

    def as_dict(self) -> dict:
        return {"kept_float": len(self.kept_float), "top1": round(self.top1, 2),
                "top1_drop": round(self.top1_drop, 2), "top1_agreement": round(self.top1_agreement, 2)}


def budget_metric(val_images: int) -> str:
    """On a few hundred images the top-1 drop moves by a point when 3 images flip; the share of
    images whose class changed (disagreement) is far steadier, and never smaller than the drop."""
    return "disagreement" if val_images < 5000 else "drop"


def within_budget(drop: float, agreement: float, max_drop: float, metric: str) -> bool:
    return (100.0 - agreement if metric == "disagreement" else drop) <= max_drop + 1e-9


def fallback(variants, rank: Callable[[], list[str]], val_crops: np.ndarray, val_labels: np.ndarray, ref_scores,
             max_drop: float, limit: int, quiet: bool = False) -> tuple[list[FallbackStep], bool, str]:
    """Evaluate the all-INT8 artifact; while it is over `max_drop`, keep one more layer in float,
    most sensitive first (`rank()` is called only if a layer has to move), up to `limit` layers.
    Returns every step's scores, whether the budget was met, and the metric it was judged by."""
    metric = budget_metric(len(val_crops))
    steps: list[FallbackStep] = []
    order: list[str] = []
    count = 0
    while True:
        kept = order[:count]
        # Exactly how the pipeline then evaluates the shipped file (same batching, same numbers).
        s = score(predict_all(variants.runner(kept), val_crops, quiet=True), val_labels, ref_scores.top1_classes)
        step = FallbackStep(list(kept), s.top1, ref_scores.top1 - s.top1, s.top1_agreement)
        steps.append(step)
        if not quiet:
            say(f"fallback: {count} layer(s) in float -> top-1 {s.top1:.2f}, drop {step.top1_drop:.2f}, "
                f"agreement {s.top1_agreement:.2f}%")
        if within_budget(step.top1_drop, step.top1_agreement, max_drop, metric):
            return steps, True, metric
        if count >= limit:
            return steps, False, metric
        if not order:
            order = rank()
            limit = min(limit, len(order))
        count += 1


def float_limit(num_layers: int, requested: int | None) -> int:
    return requested if requested is not None else max(1, int(num_layers * DEFAULT_FLOAT_FRACTION))
