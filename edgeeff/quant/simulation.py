"""INT8 simulated in PyTorch, the way the integer runtimes compute: quantization-aware recovery.

Distillation that trains the float model learns nothing about rounding; the INT8 step then
costs whatever it costs. Training the variant with its INT8 rounding simulated in the forward
pass (fake quantization, gradients passed straight through the rounding) lets it learn weights
whose INT8 copy behaves like the float one. What is simulated is what every edgeeff target does:

  weights      per-output-channel symmetric INT8, [-127, 127], scale = max|w| / 127. Per
               channel, quantizing w and quantizing the BN-folded w * gamma / sigma round
               identically (the fold is a per-channel factor), so BatchNorm need not be folded.
  activations  per-tensor asymmetric INT8 at the tensors an integer runtime materialises: the
               input, each conv's output after BN (after its ReLU6 where the runtimes fuse it),
               each activation's output, each residual sum, the SE tensors, the pooled
               features and the logits.

Activation ranges are computed once from calibration images by `calibration.tensor_ranges`, the
same function (and recipe) that calibrates the real artifacts, on statistics collected here in
torch; they stay fixed while training (the real artifact is calibrated afresh afterwards).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..models.builder import FUSED_ACTIVATIONS, ConvBNAct, MBConv, SqueezeExcite, forward_with_hooks
from .calibration import HARD_SWISH_FLOOR, ActivationStats, histogram_counts, tensor_ranges
from .scale_groups import GroupedPath

WEIGHT_QMAX = 127
ACT_QMIN, ACT_QMAX = -128, 127
# What reads a conv's output, for the activation-aware ranges (calibration.ELEMENTWISE names).
ELEMENTWISE_NAMES = {nn.Hardswish: "hardswish", nn.SiLU: "swish", nn.Sigmoid: "sigmoid"}


def quant_points(model: nn.Module) -> dict[str, tuple[nn.Module, str, str | None]]:
    """name -> (module, "input" | "output", elementwise function reading it or None), in order."""
    points = {"input": (model.stem, "input", None)}
    # A GroupedPath's depthwise outputs are its concatenation's inputs, which the quantizers give
    # the concatenation's own scale: one rounding, at the concatenation's point.
    concatenated = {f"{name}.depthwises.{i}" for name, module in model.named_modules()
                    if isinstance(module, GroupedPath) for i in range(len(module.depthwises))}
    for name, module in model.named_modules():
        if isinstance(module, ConvBNAct):
            if not isinstance(module.act, FUSED_ACTIVATIONS):
                points[f"{name}.bn"] = (module.bn, "output", ELEMENTWISE_NAMES.get(type(module.act)))
                if name not in concatenated:
                    points[f"{name}.act"] = (module.act, "output", None)
            elif name not in concatenated:
                last = module.bn if isinstance(module.act, nn.Identity) else module.act
                points[f"{name}.out"] = (last, "output", None)
        elif isinstance(module, SqueezeExcite):
            points[f"{name}.pooled"] = (module.reduce, "input", None)
            points[f"{name}.reduce"] = (module.reduce, "output", ELEMENTWISE_NAMES.get(type(module.act)))
            points[f"{name}.act"] = (module.act, "output", None)
            points[f"{name}.expand"] = (module.expand, "output", "sigmoid")
            points[f"{name}.gate"] = (module.gate, "output", None)
            points[f"{name}.out"] = (module, "output", None)
        elif isinstance(module, GroupedPath):  # the groups' concatenation (scale_groups.py)
            points[f"{name}.out"] = (module, "output", None)
        elif isinstance(module, MBConv) and module.has_residual:
            points[f"{name}.sum"] = (module, "output", None)
    points["pooled"] = (model.classifier, "input", None)
    points["logits"] = (model.classifier, "output", None)
    return points


def _hook(module: nn.Module, where: str, fn):
    """Register `fn(tensor) -> tensor | None` on a module's input or output."""
    if where == "input":
        return module.register_forward_pre_hook(lambda _m, args: _replace_first(args, fn(args[0])))
    return module.register_forward_hook(lambda _m, _args, out: fn(out))


def _replace_first(args: tuple, value):
    return None if value is None else (value, *args[1:])


@torch.no_grad()
def collect_stats(model: nn.Module, batches: list[torch.Tensor]) -> ActivationStats:
    """Min/max, then a histogram over that range, of every quantization point (calibration.py's
    two passes, on the torch model)."""
    points = quant_points(model)
    names = list(points)
    low = {n: np.inf for n in names}
    high = {n: -np.inf for n in names}
    hist = {n: np.zeros(0) for n in names}

    def run(observe):
        forward_with_hooks(model, [_hook(module, where, lambda t, n=n: observe(n, t))
                                   for n, (module, where, _) in points.items()], batches)

    def extremes(name, t):
        low[name] = min(low[name], float(t.min()))
        high[name] = max(high[name], float(t.max()))

    def histogram(name, t):
        counts = histogram_counts(t.numpy(), low[name], high[name])
        hist[name] = counts if hist[name].size == 0 else hist[name] + counts

    run(extremes)
    run(histogram)
    return ActivationStats(names, np.array([low[n] for n in names], np.float32),
                           np.array([high[n] for n in names], np.float32), np.stack([hist[n] for n in names]))


def activation_ranges(model: nn.Module, batches: list[torch.Tensor], recipe: dict,
                      symmetric: bool = False, asymmetric_points: tuple[str, ...] = ()) -> dict[str, tuple[float, float]]:
    """Per quantization point, the (low, high) the recipe gives (calibration.tensor_ranges);
    hard-swish inputs need nothing below HARD_SWISH_FLOOR. `symmetric`: zero point 0 (TensorRT),
    except at the points named by `asymmetric_points` (suffixes: TensorRT's centred inputs)."""
    points = quant_points(model)
    readers = {n: fn for n, (_, _, fn) in points.items() if fn is not None}
    floors = {n: HARD_SWISH_FLOOR for n, fn in readers.items() if fn == "hardswish"}
    stats = collect_stats(model, batches)
    ranges = tensor_ranges(stats, recipe, symmetric=symmetric, readers=readers, floors=floors)
    if symmetric and asymmetric_points:
        own = tensor_ranges(stats, recipe, symmetric=False, readers=readers, floors=floors)
        ranges.update({n: r for n, r in own.items() if n.endswith(tuple(asymmetric_points))})
    return ranges


def _activation_qparams(low: float, high: float, symmetric: bool = False) -> tuple[float, int]:
    if symmetric:  # zero point 0, [-127, 127] (TensorRT: quant/qdq.py's activation_scale)
        return max(max(abs(low), abs(high)) / 127, 1e-8), 0
    low, high = min(low, 0.0), max(high, 0.0)  # zero must be exact (padding, ReLU)
    scale = max((high - low) / (ACT_QMAX - ACT_QMIN), 1e-8)
    zero_point = int(np.clip(round(ACT_QMIN - low / scale), ACT_QMIN, ACT_QMAX))
    return scale, zero_point


class _FakeQuantWeight(nn.Module):
    """Per-output-channel symmetric INT8 weights; the scale follows the weights as they train."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        bound = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
        scale = (bound / WEIGHT_QMAX).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX)


@contextlib.contextmanager
def simulated_int8(model: nn.Module, ranges: dict[str, tuple[float, float]], weights: bool = True,
                   activations=None):
    """Inside the block, `model` computes as its INT8 copy would (module names and parameters
    stay the model's own; the state dict is clean again on exit). `weights=False` or
    `activations=[names]` (default: every point) simulate a part only, to find which part costs."""
    hooks, weighted = [], []
    points = quant_points(model)
    chosen = list(points) if activations is None else list(activations)
    try:
        for module in model.modules():
            if weights and isinstance(module, (nn.Conv2d, nn.Linear)):
                parametrize.register_parametrization(module, "weight", _FakeQuantWeight())
                weighted.append(module)
        for name in chosen:
            module, where, _ = points[name]
            scale, zero_point = _activation_qparams(*ranges[name])
            hooks.append(_hook(module, where, lambda t, s=scale, z=zero_point:
                               torch.fake_quantize_per_tensor_affine(t, s, z, ACT_QMIN, ACT_QMAX)))
        yield model
    finally:
        for h in hooks:
            h.remove()
        for module in weighted:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
