"""The INT8 model optimised unit by unit against the FP32 model: activation ranges, weight rounding.

The network is walked unit by unit (the stem, every MBConv block, the head with the classifier).
Each unit's input comes from the INT8 model built so far, so later blocks correct what earlier
ones could not; its target is the FP32 model's output on calibration images; the whole INT8
arithmetic is simulated (quant/simulation.py: per-output-channel symmetric weights with scale
max|w| / 127, per-tensor activations at every tensor an integer runtime stores, as the target's
runtime quantizes them: symmetric for TensorRT, TFLite's fixed LOGISTIC scale, ...). Per unit:

1. Activation ranges (--optimize ranges): each range the recipe gave is scaled by RANGE_FACTORS
   in turn, in forward order, and the factor with the lowest error of the unit's output is kept;
   a histogram rule cannot see what a clipped range costs after swish, the SE gate and the next
   conv, the unit's output can. The backends receive the searched ranges by tensor
   (quant/tensor_names.py).
2. Weight rounding (--optimize rounding): rounding every weight to its nearest INT8 step is not the
   best INT8 model; the errors of a layer's weights add up in its outputs, and rounding some
   weights the other way cancels them (AdaRound, Nagel et al. 2020). Each weight learns whether to
   round down or up against the unit's output (BRECQ's block reconstruction, Li et al. 2021), with
   half the activation quantizers dropped at random per element while learning (QDrop, Wei et al.
   2022). A unit keeps nearest rounding where learning did not lower its error.

The learned integers are written back as float weights that lie exactly on their grid:
w = scale * q, with each channel's largest weight left where it was so that max|w|, and so the
scale, stay the same. A per-channel factor (BatchNorm's fold) does not change which integer a
weight rounds to, so a backend's quantizer that computes that scale and folds BatchNorm (ONNX
Runtime's) rounds to exactly q: the integers the runtime holds are the optimised ones
(`tests/test_optimise.py` reads them back).

Deterministic: images, mini-batches and QDrop masks come from one seeded generator, and the
number of steps is a count, not a time. The time budget (--optimize-minutes) is turned into counts
(images, steps, units) by a cost model before anything runs (plan_for_budget), never by the clock.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..progress import progress
from .qdq import centred_grid
from .simulation import ACT_QMAX, ACT_QMIN, WEIGHT_QMAX, _activation_qparams, _hook, quant_points

# AdaRound's rectified sigmoid stretches sigmoid(v) to (GAMMA, ZETA), then clips it to [0, 1], so
# the learned rounding can reach exactly 0 or 1 with a finite v.
GAMMA, ZETA = -0.1, 1.1
DEFAULT_STEPS = 20  # per unit: what 4 minutes allow on a 2-core host for B0 (docs/quantization.md)
DEFAULT_IMAGES = 64
DEFAULT_BATCH = 32
LEARNING_RATE = 2e-2
WARMUP = 0.2  # the first fifth of the steps learns without the push towards 0 or 1
BETA = (20.0, 2.0)  # the push's exponent, annealed: soft at first, then every h to 0 or 1
DROP_PROB = 0.5  # QDrop: each activation element is quantized with this probability while learning
# Range search: each point's recipe range scaled by these factors, the one with the lowest unit
# error kept (one pass, in forward order, on SEARCH_IMAGES of the unit's inputs).
RANGE_FACTORS = (0.5, 0.7, 0.85, 1.0, 1.15, 1.3)
SEARCH_IMAGES = 16
# refine_ranges: every range at once against the FP32 logits, after the search. Off by default;
# targets turn it on by measurement (`optimize_refine_steps` in their file: jetson-orin for swish
# models, where 64 steps took the B0 test model's held-out KL from 0.059 to 0.0305; on `onnx` 24
# steps made the file worse, docs/quantization.md).
DEFAULT_REFINE_STEPS = 0
# `--optimize refine` (the refinement alone, from the recipe's ranges, no search): its steps when
# neither the flag nor the target gives them
REFINE_ONLY_STEPS = 48
REFINE_BATCH = 16
REFINE_LEARNING_RATE = 1e-2
# The fewest steps a plan keeps (below, none): 48 were measured to pay on jetson-orin, 24 made the
# onnx file's KL worse (docs/quantization.md); a budget-cut refinement of a bigger model (B1 on
# jetson-orin: 28 of 48) would be unmeasured ground.
MIN_REFINE_STEPS = 40
# One refinement image costs this many forward passes of the whole model with every point
# quantized (forward, backward through the quantizers and convs; the same for every target: the
# backward pass runs through the whole model). Fitted on the B0 test model, 2 threads, an idle
# host: 1.95 s per step of 16 images on jetson-orin (80 - 48 steps: 62 s), 1.84 s on rpi (80
# steps: 147 s more than none).
REFINE_PASSES_PER_IMAGE = 1.55
# --optimize-minutes: the budget is turned into a plan (how many images the search and the
# learning see, how many units) by a cost model, not by the clock, so the same inputs still give
# the same file. The simulation's time goes to fake-quantizing activations (elementwise, memory
# bound), so the model counts the elements its quantizers see: seconds = SECONDS_PER_MELEMENT_PX x
# resolution x the sum over units of (millions of elements quantized per image in the unit) x (the
# images the unit is run on: 4 passes over `images`, points x factors x `search_images`, 3 x batch
# per learning step; the 4 passes count every point, the rest only the points the target's
# simulation quantizes). The resolution factor is empirical: per element, the large tensors of big
# inputs cost more (cache). Fitted on this 2-core host, 2 threads, idle, `--optimize ranges`,
# scale groups off (docs/quantization.md): B3 at 300 px 109 s for 17,733 Melem-images (the model
# says 117), B7 at 600 px 516 s for 36,432 (481), B0 at 224 px 84-171 s for 20,017 (98), all
# `onnx`. Per target on B0 (2026-12-07), estimated / measured search: onnx 99 / 84 s, rpi 92 /
# 101, intel 31 / 45, jetson-orin 48 / 30. A faster machine finishes sooner, a slower or loaded
# one later; the report gives the plan and the time.
SECONDS_PER_MELEMENT_PX = 2.2e-5
DEFAULT_OPTIMIZE_MINUTES = 3.0
MIN_SEARCH_IMAGES, MIN_STEPS, MIN_IMAGES = 4, 5, 16


@dataclass
class OptimiseSettings:
    steps: int = DEFAULT_STEPS
    images: int = DEFAULT_IMAGES
    batch: int = DEFAULT_BATCH
    seed: int = 0
    search_ranges: bool = True
    range_factors: tuple[float, ...] = RANGE_FACTORS
    search_images: int = SEARCH_IMAGES
    search_passes: int = 1  # a second pass revisits each range with the unit's later ranges set
    # How the target's runtime quantizes activations: zero point 0 (TensorRT), and the points it
    # leaves in float (name suffixes; TensorRT's placement quantizes no conv output)
    symmetric: bool = False
    float_points: tuple[str, ...] = ()
    # points whose range the runtime fixes, by name suffix (TFLite's LOGISTIC output: [0, 255/256])
    fixed_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # The project conv's output of a residual block stays float: TensorRT fuses the conv with the
    # residual Add (the sum is quantized, at the next block's input), so no quantizer sits between.
    float_residual_branches: bool = False
    # Each depthwise conv's input stays float: NNCF quantizes it per channel for OpenVINO's CPU,
    # close enough to float that a per-tensor simulation would only mislead the search.
    float_depthwise_inputs: bool = False
    # Points centred although `symmetric` (name suffixes): TensorRT's centred inputs (jetson-orin's
    # centre_pointwise_inputs: an Add of -m before the Q, m taken back in the reader's bias)
    asymmetric_points: tuple[str, ...] = ()
    # refine_ranges after the unit-by-unit search: mini-batches of `refine_batch` optimisation images
    # against the FP32 logits (0: off)
    refine_steps: int = 0
    refine_batch: int = REFINE_BATCH
    # Only the first `units` units are optimised (the rest keep the recipe's ranges and nearest
    # rounding): the last cut of plan_for_budget. None: every unit.
    units: int | None = None


class SoftRoundedWeight(nn.Module):
    """A parametrization: the weight as scale * clamp(floor(w / scale) + h, -127, 127), where h in
    [0, 1] is learned per weight (soft while learning, 0 or 1 once `hard`)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach()
        bound = w.abs().flatten(1).amax(1).clamp_min(1e-12)
        scale = (bound / WEIGHT_QMAX).reshape(-1, *([1] * (w.dim() - 1)))
        ratio = w / scale
        self.register_buffer("scale", scale)
        self.register_buffer("base", torch.floor(ratio))
        # Each channel's largest |w| stays exactly +-127: it sets the scale every backend computes.
        self.register_buffer("pinned", ratio.abs() >= WEIGHT_QMAX - 1e-4)
        self.register_buffer("nearest", torch.round(ratio) - torch.floor(ratio))
        rest = (ratio - self.base).clamp(1e-4, 1 - 1e-4)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.mode = "soft"  # "soft" | "hard" | "nearest"

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def integers(self) -> torch.Tensor:
        up = {"soft": self.h, "hard": lambda: (self.v >= 0).float(), "nearest": lambda: self.nearest}[self.mode]()
        return torch.clamp(self.base + torch.where(self.pinned, self.nearest, up), -WEIGHT_QMAX, WEIGHT_QMAX)

    def forward(self, _weight: torch.Tensor) -> torch.Tensor:
        return self.scale * self.integers()

    def round_loss(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).mean()


def fake_quantize_without_grad(t: torch.Tensor, scale: float, zero: int, qmin: int, qmax: int) -> torch.Tensor:
    """torch.fake_quantize_per_tensor_affine's arithmetic, bit for bit (float32 1/scale, round half
    to even, the zero point added in float32, clamped, shifted back, times the float32 scale), for
    tensors that need no gradient, in half its time. Its CPU kernel was half the time of a whole
    `--optimize ranges` search (B0 test model, cProfile: 50 of 95 s), and four vectorised passes
    over a fresh tensor take half as long as it does (it also writes the gradient's mask)."""
    step = torch.tensor(scale, dtype=torch.float32)
    q = torch.round(t * (1 / step)).add_(zero).clamp_(qmin, qmax)
    return q.sub_(zero).mul_(step)


class ActivationQuantizers:
    """Per-tensor INT8 fake quantization at every point of quant_points (the logits excepted when
    the artifact's output stays float), each with a range that can be changed (the range search);
    while learning, each element is quantized with probability `keep` (QDrop), from a seeded
    generator."""

    def __init__(self, model: nn.Module, ranges: dict, generator: torch.Generator, skip=("logits",),
                 symmetric: bool = False, float_points: tuple[str, ...] = (), fixed_ranges=None,
                 float_residual_branches: bool = False, float_depthwise_inputs: bool = False,
                 asymmetric_points: tuple[str, ...] = ()):
        self.generator, self.keep, self.hooks, self.symmetric = generator, 1.0, [], symmetric
        self.asymmetric_points = tuple(asymmetric_points)
        self.ranges, self.modules, self.qparams, self.fixed = {}, {}, {}, set()
        points = quant_points(model)
        floats = set(residual_branch_points(points)) if float_residual_branches else set()
        floats |= set(depthwise_input_points(model, points)) if float_depthwise_inputs else set()
        for name, (module, where, _) in points.items():
            if name in skip or name not in ranges or name in floats or (float_points and name.endswith(float_points)):
                continue
            self.modules[name] = module
            fixed = next((r for suffix, r in (fixed_ranges or {}).items() if name.endswith(suffix)), None)
            if fixed is not None:
                self.fixed.add(name)
            self.set_range(name, *(fixed or ranges[name]))
            self.hooks.append(_hook(module, where, lambda t, n=name: self._quantize_point(n, t)))
        self.log_factors: dict[str, torch.Tensor] = {}  # refine_ranges: learned range factors, exp(a)

    @classmethod
    def for_settings(cls, model: nn.Module, ranges: dict, generator: torch.Generator, settings: "OptimiseSettings",
                     skip=("logits",)) -> "ActivationQuantizers":
        """The quantizers as `settings` simulate the target's runtime (placement, symmetry, fixed ranges)."""
        return cls(model, ranges, generator, skip, settings.symmetric, settings.float_points, settings.fixed_ranges,
                   settings.float_residual_branches, settings.float_depthwise_inputs, settings.asymmetric_points)

    def set_range(self, name: str, low: float, high: float) -> None:
        self.ranges[name] = (float(low), float(high))
        if self.symmetric and self.asymmetric_points and name.endswith(self.asymmetric_points):
            # TensorRT's centred tensor (qdq.build_qdq's `shifted`): x - m quantized with zero point 0
            # and the scale of half the range, m added back (in the reader's bias): a grid offset by
            # m, not the integer zero point of an asymmetric quantizer (a different rounding).
            middle, scale = centred_grid(low, high)
            self.qparams[name] = (float(scale), 0, float(middle))
        else:
            self.qparams[name] = (*_activation_qparams(low, high, self.symmetric), 0.0)

    def inside(self, unit: nn.Module) -> list[str]:
        """The points whose tensors this unit computes (or, for the model's input, reads first)."""
        members = set(unit.modules())
        return [name for name, module in self.modules.items() if module in members and name not in self.fixed]

    def _quantize_point(self, name: str, t: torch.Tensor) -> torch.Tensor:
        scale, zero, offset = self.qparams[name]
        log_factor = self.log_factors.get(name)
        if log_factor is None:
            return self._quantize(t, scale, zero, offset)
        # The range scaled by exp(a): the scale and a centred grid's offset scale with it, the zero
        # point does not. torch's learnable fake quantizer passes gradients straight through the
        # rounding and gives the scale LSQ's gradient (Esser et al. 2020), clipped values included,
        # in one kernel.
        factor = log_factor.exp()
        step = (scale * factor).reshape(1)
        zero_point = torch.tensor([float(zero)])
        if offset:
            shift = offset * factor
            return torch._fake_quantize_learnable_per_tensor_affine(t - shift, step, zero_point, ACT_QMIN, ACT_QMAX,
                                                                    1.0) + shift
        return torch._fake_quantize_learnable_per_tensor_affine(t, step, zero_point, ACT_QMIN, ACT_QMAX, 1.0)

    def _quantize(self, t: torch.Tensor, scale: float, zero: int, offset: float) -> torch.Tensor:
        quantize = torch.fake_quantize_per_tensor_affine if t.requires_grad else fake_quantize_without_grad
        if offset:  # a centred tensor: its grid is offset by m (set_range)
            q = quantize(t - offset, scale, zero, ACT_QMIN, ACT_QMAX) + offset
        else:
            q = quantize(t, scale, zero, ACT_QMIN, ACT_QMAX)
        if self.keep >= 1.0:
            return q
        mask = torch.rand(t.shape, generator=self.generator) < self.keep
        return torch.where(mask, q, t)

    def remove(self):
        for h in self.hooks:
            h.remove()


def refine_ranges(model: nn.Module, acts: ActivationQuantizers, images: torch.Tensor, reference: torch.Tensor,
                  steps: int, batch: int, generator: torch.Generator,
                  learning_rate: float = REFINE_LEARNING_RATE, quiet: bool = True) -> list[float]:
    """Every range of `acts` (the fixed ones excepted) scaled by a factor learned against the FP32
    model's output distribution: KL(softmax(reference) || softmax(model)) over mini-batches of
    `images`, the whole INT8 arithmetic simulated. The unit-by-unit search judges each range by its
    own unit's output error; this judges them all by what the reader of the logits sees. Returns
    the loss per step."""
    import torch.nn.functional as F

    names = [name for name in acts.modules if name not in acts.fixed]
    acts.log_factors = {name: torch.zeros((), requires_grad=True) for name in names}
    optimiser = torch.optim.Adam(list(acts.log_factors.values()), lr=learning_rate)
    # cosine decay to zero: the factors settle instead of ending on the last mini-batch's noise
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, steps))
    losses = []
    try:
        with torch.enable_grad():
            for _ in progress(range(steps), "refining ranges against the FP32 logits", "step", quiet):
                idx = torch.randint(0, len(images), (min(batch, len(images)),), generator=generator)
                out = model(images[idx])
                loss = F.kl_div(F.log_softmax(out, 1), F.log_softmax(reference[idx], 1), reduction="batchmean",
                                log_target=True)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                losses.append(float(loss.detach()))
    finally:
        factors = {name: float(a.detach().exp()) for name, a in acts.log_factors.items()}
        acts.log_factors = {}
    for name, factor in factors.items():
        low, high = acts.ranges[name]
        acts.set_range(name, low * factor, high * factor)
    return losses


def residual_branch_points(points: dict) -> list[str]:
    """The project conv outputs that a residual Add reads (`blocks.N.project.out` where the block
    has a `blocks.N.sum`)."""
    return [name for name in points if name.endswith(".project.out")
            and name.removesuffix(".project.out") + ".sum" in points]


def depthwise_input_points(model: nn.Module, points: dict) -> list[str]:
    """The points whose tensor a depthwise conv reads: the expand conv's output, or (a block
    without one) the previous unit's output."""
    def output_of(prefix: str) -> str | None:
        return next((f"{prefix}{end}" for end in (".sum", ".act", ".out", ".project.out")
                     if f"{prefix}{end}" in points), None)

    found = []
    for i, block in enumerate(model.blocks):
        if block.dw is None:  # Fused-MBConv (EfficientNetV2): no depthwise conv
            continue
        if block.expand is not None:
            found.append(output_of(f"blocks.{i}.expand"))
        else:
            found.append(output_of("stem") if i == 0 else output_of(f"blocks.{i - 1}"))
    return [name for name in found if name is not None]


class _Head(nn.Module):
    """The last unit: head conv, global pool, classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.head, self.classifier = model.head, model.classifier

    def forward(self, x):
        return self.classifier(self.head(x).mean((2, 3)))


def units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [("stem", model.stem)] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)] + [("head", _Head(model))]


@dataclass
class UnitCost:
    """What one image through one unit costs the simulation."""
    name: str
    points: int  # quantization points inside the unit: the range search tries each
    melements: float  # millions of elements quantized at those points, per image
    resolution: int
    # millions of elements at every point, quantized or not: the starting statistics and the
    # refinement's backward pass run through the whole model whatever the target quantizes
    all_melements: float


def unit_costs(model: nn.Module, resolution: int, settings: "OptimiseSettings | None" = None) -> list[UnitCost]:
    """Per unit (units()), measured on one forward pass of a blank image: the points the target's
    simulation (`settings`) quantizes, or every point. (TensorRT's leaves conv outputs float: on
    B0 it searches 118 ranges where ONNX Runtime's searches 189, in about a third of the time.)"""
    parts = units(model)
    owner = {}
    for i, (_, unit) in enumerate(parts):
        for m in unit.modules():
            owner.setdefault(m, i)
    elements, every, points = [0] * len(parts), [0] * len(parts), [0] * len(parts)
    all_points = quant_points(model)
    quantized, searched = set(all_points), set(all_points)
    if settings is not None:
        acts = ActivationQuantizers.for_settings(model, {name: (-1.0, 1.0) for name in all_points},
                                                 torch.Generator(), settings)
        acts.remove()
        quantized, searched = set(acts.modules), set(acts.modules) - acts.fixed

    def counted(i, is_quantized: bool):
        def fn(t):
            every[i] += t.numel()
            elements[i] += t.numel() if is_quantized else 0
        return fn

    hooks = []
    for name, (module, where, _) in all_points.items():
        if module in owner:
            points[owner[module]] += name in searched
            hooks.append(_hook(module, where, counted(owner[module], name in quantized)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, resolution, resolution))
    finally:
        for h in hooks:
            h.remove()
    return [UnitCost(name, p, e / 1e6, resolution, a / 1e6)
            for (name, _), p, e, a in zip(parts, points, elements, every)]


def estimated_seconds(costs: list[UnitCost], settings: "OptimiseSettings") -> float:
    """The cost model (SECONDS_PER_MELEMENT_PX) for these settings."""
    total = 0.0
    for cost in costs[:settings.units]:
        # the starting ranges' statistics are taken at every point, whatever the target quantizes
        total += 4 * settings.images * cost.all_melements * cost.resolution * SECONDS_PER_MELEMENT_PX
        images = 0
        if settings.search_ranges:
            images += cost.points * len(settings.range_factors) * settings.search_images * settings.search_passes
        if settings.steps:
            images += settings.images + 3 * settings.batch * settings.steps
        total += images * cost.melements * cost.resolution * SECONDS_PER_MELEMENT_PX
    if settings.refine_steps and (settings.units is None or settings.units >= len(costs)):
        whole = sum(cost.all_melements * cost.resolution for cost in costs)
        total += settings.refine_steps * settings.refine_batch * REFINE_PASSES_PER_IMAGE * whole * SECONDS_PER_MELEMENT_PX
    return total


def plan_for_budget(model: nn.Module, resolution: int, settings: "OptimiseSettings",
                    minutes: float) -> tuple["OptimiseSettings", dict]:
    """`settings` cut down until the cost model says they fit in `minutes`: first the images each
    range is searched on (down to MIN_SEARCH_IMAGES), then the learning steps (MIN_STEPS), then the
    images (MIN_IMAGES), and last the units, from the end (the early units come first: their error
    travels through all the others). What was planned goes into the report."""
    from dataclasses import replace

    costs = unit_costs(model, resolution, settings)
    budget = minutes * 60
    wanted = settings
    # The refinement steps, the search images, then the learning steps: each scaled by the share of
    # its own cost the budget leaves (what the plan costs without that work at all is the part it
    # cannot cut), down to its floor; the refinement, an addition to the search, goes entirely below
    # its floor.
    for field_name, floor, without in (("refine_steps", MIN_REFINE_STEPS, {"refine_steps": 0}),
                                       ("search_images", MIN_SEARCH_IMAGES, {"search_ranges": False}),
                                       ("steps", MIN_STEPS, {"steps": 0})):
        value = getattr(settings, field_name)
        if estimated_seconds(costs, settings) <= budget or not getattr(settings, next(iter(without))):
            continue
        fixed = estimated_seconds(costs, replace(settings, **without))
        share = (budget - fixed) / max(estimated_seconds(costs, settings) - fixed, 1e-9)
        cut = min(value, int(value * share))
        if field_name == "refine_steps" and cut < floor:
            cut = 0
        settings = replace(settings, **{field_name: max(floor, cut) if cut or field_name != "refine_steps" else 0})
    while estimated_seconds(costs, settings) > budget and settings.images > MIN_IMAGES:
        settings = replace(settings, images=max(MIN_IMAGES, settings.images // 2),
                           search_images=min(settings.search_images, max(MIN_IMAGES, settings.images // 2)))
    if estimated_seconds(costs, settings) > budget:
        fits = [k for k in range(len(costs) + 1) if estimated_seconds(costs, replace(settings, units=k)) <= budget]
        # 0 fits: nothing is optimised; with units cut there is no whole model to refine
        settings = replace(settings, units=max(fits), refine_steps=0)
    estimate = estimated_seconds(costs, settings)
    plan = {"budget_minutes": minutes, "estimated_minutes": round(estimate / 60, 2),
            "images": settings.images, "search_images": settings.search_images, "steps_per_unit": settings.steps,
            "units": settings.units if settings.units is not None else len(costs), "of_units": len(costs),
            "refine_steps": settings.refine_steps,
            "cut": [k for k in ("refine_steps", "search_images", "steps", "images", "units")
                    if getattr(settings, k) != getattr(wanted, k)]}
    return settings, plan


def _weighted(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _relative_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error over the target's energy, per image, averaged: comparable across units."""
    dims = tuple(range(1, target.dim()))
    return (((out - target) ** 2).sum(dims) / (target ** 2).sum(dims).clamp_min(1e-12)).mean()


@torch.no_grad()
def _run(unit: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([unit(x[i:i + batch]) for i in range(0, len(x), batch)])


def optimise_int8_model(model: nn.Module, images: torch.Tensor, ranges: dict, settings: OptimiseSettings,
                      quiet: bool = False, skip_activations=("logits",),
                      refine_images: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
    """A copy of `model` whose conv and linear weights lie on their INT8 grid, rounded as learned
    (nearest where learning did not help, or with steps=0), and what was done: the searched ranges
    and, per unit, the relative error of its output with the recipe's ranges, with the searched
    ones, and with the learned rounding (INT8 simulated throughout)."""
    generator = torch.Generator().manual_seed(settings.seed)
    reference = model.eval()
    quantized = copy.deepcopy(model).eval()
    for p in quantized.parameters():
        p.requires_grad_(False)
    acts = ActivationQuantizers.for_settings(quantized, ranges, generator, settings, skip_activations)
    x_fp = images
    x_q = images
    report = []
    pairs = list(zip(units(reference), units(quantized)))[:settings.units]
    try:
        for (name, fp_unit), (_, q_unit) in progress(pairs, "optimising INT8", "unit", quiet):
            target = _run(fp_unit, x_fp, settings.batch)
            rounders = []
            for module in _weighted(q_unit):
                parametrize.register_parametrization(module, "weight", SoftRoundedWeight(module.weight))
                rounders.append(module.parametrizations.weight[0])
            error_recipe = _unit_error(q_unit, rounders, "nearest", x_q, target, settings.batch)
            searched = _search_ranges(q_unit, rounders, acts, x_q, target, settings) \
                if settings.search_ranges else {}
            error_before = _unit_error(q_unit, rounders, "nearest", x_q, target, settings.batch)
            _learn(q_unit, rounders, acts, x_q, target, settings, generator, error_before)
            # with nothing learned, hard rounding is nearest rounding: no second pass to find that out
            error_after = _unit_error(q_unit, rounders, "hard", x_q, target, settings.batch) \
                if settings.steps else error_before
            chosen = "learned" if error_after < error_before else "nearest"  # never worse than nearest
            for r in rounders:
                r.mode = "hard" if chosen == "learned" else "nearest"
            for module in _weighted(q_unit):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
                module.weight.requires_grad_(False)
            report.append({"unit": name, "weights": sum(r.v.numel() for r in rounders),
                           "error_recipe_ranges": float(f"{error_recipe:.6g}"), "ranges_changed": searched,
                           "error_nearest": float(f"{error_before:.6g}"),
                           "error_learned": float(f"{min(error_after, error_before):.6g}"), "kept": chosen})
            x_q = _run(q_unit, x_q, settings.batch)  # the INT8 model so far feeds the next unit
            x_fp = target
        refinement = None
        if settings.refine_steps and len(pairs) == len(units(quantized)):  # every unit searched
            before = dict(acts.ranges)
            refine_on = images if refine_images is None else refine_images
            reference_logits = x_fp if refine_images is None else _run(reference, refine_on, settings.batch)
            losses = refine_ranges(quantized, acts, refine_on, reference_logits, settings.refine_steps,
                                   settings.refine_batch, generator, quiet=quiet)
            refinement = {"steps": settings.refine_steps, "batch": settings.refine_batch, "images": int(len(refine_on)),
                          "learning_rate": REFINE_LEARNING_RATE, "loss": "KL(FP32 || INT8) of the logits",
                          "loss_first_step": round(losses[0], 6), "loss_last_step": round(losses[-1], 6),
                          "factors": {name: round(acts.ranges[name][1] / high if high else
                                                  acts.ranges[name][0] / low if low else 1.0, 6)
                                      for name, (low, high) in before.items() if name not in acts.fixed}}
    finally:
        acts.remove()
    method = [m for m, on in (("range-search", settings.search_ranges),
                              ("adaround-block-reconstruction", settings.steps > 0),
                              ("range-refinement", refinement is not None)) if on]
    info = {"method": "+".join(method) or "none", "steps_per_unit": settings.steps,
            "range_search": settings.search_ranges,
            "ranges": {name: r for name, r in acts.ranges.items() if name not in acts.fixed},
            "activations": "symmetric" if settings.symmetric else "asymmetric",
            "images": int(len(images)), "batch": settings.batch, "seed": settings.seed,
            "activation_dropout": DROP_PROB, "units": report,  # its time: timings_s["optimise"]
            **({"refinement": refinement} if refinement else {})}
    return quantized, info


def _search_ranges(unit, rounders, acts: ActivationQuantizers, x, target, settings: OptimiseSettings) -> dict:
    """Each activation range of this unit, scaled by the range factors one at a time (forward
    order, `search_passes` times), kept where the unit's output error with nearest weights is
    lowest; returns each changed range's overall factor."""
    x, target = x[:settings.search_images], target[:settings.search_images]
    start = {name: acts.ranges[name] for name in acts.inside(unit)}
    for _ in range(settings.search_passes):
        for name in start:
            low, high = acts.ranges[name]
            errors = []
            for factor in settings.range_factors:
                acts.set_range(name, low * factor, high * factor)
                errors.append(_unit_error(unit, rounders, "nearest", x, target, settings.batch))
            best = settings.range_factors[min(range(len(errors)), key=errors.__getitem__)]
            acts.set_range(name, low * best, high * best)
    changed = {}
    for name, (low, high) in start.items():
        factor = acts.ranges[name][1] / high if high else acts.ranges[name][0] / low if low else 1.0
        if abs(factor - 1.0) > 1e-9:
            changed[name] = round(factor, 6)
    return changed


def _unit_error(unit, rounders, mode, x, target, batch) -> float:
    for r in rounders:
        r.mode = mode
    return float(_relative_error(_run(unit, x, batch), target))


def _learn(unit, rounders, acts, x, target, settings: OptimiseSettings, generator, scale_hint: float) -> None:
    if not rounders or settings.steps <= 0:
        return
    for r in rounders:
        r.mode = "soft"
    params = [r.v for r in rounders]
    optimiser = torch.optim.Adam(params, lr=LEARNING_RATE)
    warmup = int(settings.steps * WARMUP)
    # The push towards 0/1 is weighed against this unit's own error, so one setting fits every unit.
    weight = max(scale_hint, 1e-9)
    acts.keep = 1 - DROP_PROB
    try:
        with torch.enable_grad():
            for step in range(settings.steps):
                idx = torch.randint(0, len(x), (min(settings.batch, len(x)),), generator=generator)
                loss = _relative_error(unit(x[idx]), target[idx])
                if step >= warmup:
                    progress_ = (step - warmup) / max(1, settings.steps - warmup)
                    beta = BETA[0] + (BETA[1] - BETA[0]) * progress_
                    loss = loss + weight * sum(r.round_loss(beta) for r in rounders) / len(rounders)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
    finally:
        acts.keep = 1.0
