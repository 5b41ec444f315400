"""Recovery by distillation: fine-tune a surgered variant against the original model on unlabelled images.

The loss is the KL divergence between the teacher's and the student's softened outputs (Hinton
et al.'s T^2-scaled form). Both see the same augmented batch: a random resized crop of the
preprocessed crop (area 35-100%, aspect 3/4-4/3, resized back bilinearly) and a horizontal flip,
normalised with the model's own preprocessing spec, then blended with the batch's next image
(mixup: the teacher labels the blend, so it is as good a training point as a photo). BatchNorm
statistics are frozen (the student runs in eval mode): with batches of 16 on a CPU, batch
statistics are too noisy to learn from, and the quantizer later folds the frozen statistics anyway. Defaults were chosen by measurement:
docs/variants.md.

Determinism: the unit is the step. Every random choice comes from one seeded generator, so the
same images, settings and step count give the same weights on the same machine and thread
count. A time budget alone is not reproducible, so `minutes` without `steps` plans the step
count from the speed of the warm-up steps (whose learning rate does not depend on the plan) and
reports it: rerunning with `steps=` that number gives the identical model. With both, `minutes`
is an upper bound and a run cut short says so.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.preprocess import PreprocessSpec
from ..profiles import get_recipe
from ..progress import progress, say
from ..quant.simulation import activation_ranges, simulated_int8
from ..scoring import torch_batches

WARMUP_STEPS = 5
# Quantization-aware steps: activation ranges from this calib/ recipe (the real artifact is
# calibrated afresh by its target's own), and the cost of a simulated step against a float one
# (B0 hard-swish, all parameters, batch 16, 2 cores: 2.07 s against 1.38 s).
SIMULATION_RECIPE = "percentile"
SIMULATION_COST = 1.5


# AdamW's rate per parameter set. "all": 1e-4 made the loss rise, 3e-5 lowered it steadily.
# "bn": a few thousand scales and shifts, each moving a whole channel, take 1e-3.
LEARNING_RATES = {"bn": 1e-3, "all": 3e-5}


class BadRecoverySetting(ValueError):
    """A RecoverySettings field with a value recovery cannot use."""

    def __init__(self, field_name: str, value, problem: str):
        super().__init__(f"{field_name} {value!r}: {problem}")
        self.field_name, self.value, self.problem = field_name, value, problem


@dataclass
class RecoverySettings:
    steps: int | None = None          # the determinism unit; None: planned from `minutes`
    minutes: float | None = 15.0      # wall-clock upper bound
    lr: float | None = None           # None: LEARNING_RATES[train]
    weight_decay: float = 0.0
    temperature: float = 2.0
    batch: int = 16
    augment: str = "rrc-flip-mixup"   # one of AUGMENTS; mixup measured better (docs/variants.md)
    min_area: float = 0.35
    freeze_bn: bool = True
    align: bool = True                # match the teacher's per-channel BN statistics before training
    align_images: int = 64
    feature_weight: float = 0.0       # weight of the block-output (feature) loss beside the KD loss
    train: str = "all"                # "all" parameters, or "bn": BatchNorm affine + biases only
    # Fraction of the steps, at the end, trained with INT8 simulated (quant/simulation.py): the weights
    # learn to survive their own rounding. 0: float only. Chosen by measurement (docs/variants.md).
    quant_aware: float = 0.0
    range_images: int = 200           # images that set the simulated activation ranges
    seed: int = 0

    def __post_init__(self):
        # The one place these values are checked; the pipeline turns the error into a one-line
        # message naming the command-line flag of `field_name`.
        if self.train not in LEARNING_RATES:
            raise BadRecoverySetting("train", self.train, f"choose {' or '.join(LEARNING_RATES)}")
        for name in ("steps", "batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise BadRecoverySetting(name, getattr(self, name), "must be at least 1")
        for name in ("minutes", "lr", "temperature"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise BadRecoverySetting(name, getattr(self, name), "must be more than 0")
        if not 0.0 <= self.quant_aware <= 1.0:
            raise BadRecoverySetting("quant_aware", self.quant_aware, "a fraction of the steps, from 0 to 1")
        if self.steps is None and not self.minutes:
            raise BadRecoverySetting("minutes", self.minutes, "without a step count, recovery needs a time budget")
        if self.lr is None:
            self.lr = LEARNING_RATES[self.train]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RecoveryResult:
    steps_done: int
    steps_planned: int
    planned_from_time: bool
    stopped_by_time: bool
    seconds: float
    loss_first: float
    loss_last: float
    losses: list[float]
    quant_aware_from_step: int | None = None  # the first step trained with INT8 simulated

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["losses"]  # the curve, averaged over every 10 steps, is enough for a report
        d["loss_every_10_steps"] = [round(float(np.mean(self.losses[i:i + 10])), 5)
                                    for i in range(0, len(self.losses), 10)]
        d["loss_first"], d["loss_last"] = round(self.loss_first, 5), round(self.loss_last, 5)
        d["seconds"] = round(self.seconds, 1)
        return d


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * (t * t)


AUGMENTS = ("rrc-flip", "rrc-flip-mixup", "flip", "none")


def augment_batch(x: torch.Tensor, mode: str, gen: torch.Generator, min_area: float = 0.35) -> torch.Tensor:
    """Random resized crop (within the crop) + horizontal flip on a normalised NCHW batch;
    "rrc-flip-mixup" then blends each image with its neighbour in the batch.

    Why mixup: distillation matches the teacher's function, not labels, so any input is a
    valid training point. Blends of two photos (weight uniform in [0, 1]) give a few hundred
    images many more distinct inputs, the "function matching" of Beyer et al. 2022.
    """
    if mode not in AUGMENTS:
        raise ValueError(f"unknown augmentation {mode!r}; choose one of {', '.join(AUGMENTS)}")
    if mode == "none":
        return x
    n, _, h, w = x.shape
    out = []
    for i in range(n):
        img = x[i:i + 1]
        if mode.startswith("rrc-flip"):
            area = float(torch.empty(1).uniform_(min_area, 1.0, generator=gen)) * h * w
            log_ratio = float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen))
            ratio = math.exp(log_ratio)
            cw = min(w, max(8, int(round(math.sqrt(area * ratio)))))
            ch = min(h, max(8, int(round(math.sqrt(area / ratio)))))
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            img = img[:, :, top:top + ch, left:left + cw]
            if (ch, cw) != (h, w):
                img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
        if float(torch.rand(1, generator=gen)) < 0.5:
            img = img.flip(3)
        out.append(img)
    x = torch.cat(out)
    if mode.endswith("mixup") and n > 1:
        weight = torch.rand(n, generator=gen).view(n, 1, 1, 1)
        x = weight * x + (1 - weight) * x.roll(1, 0)
    return x


def quant_aware_start(planned: int | None, fraction: float) -> int | None:
    """The first simulated step: the last `fraction` of the plan (None: not known yet, or never)."""
    if fraction <= 0:
        return None
    if fraction >= 1:
        return 0
    return None if planned is None else planned - int(round(fraction * planned))


def _lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over WARMUP_STEPS, then cosine decay to zero at `total`."""
    if step < WARMUP_STEPS:
        return base * (step + 1) / WARMUP_STEPS
    span = max(1, total - WARMUP_STEPS)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - WARMUP_STEPS) / span)))


@torch.no_grad()
def align_statistics(student: torch.nn.Module, teacher: torch.nn.Module, inputs: torch.Tensor) -> int:
    """Give every BatchNorm output of the student the teacher's per-channel mean and std.

    Surgery shifts each layer's input distribution (hard-swish is not swish; a folded mean gate
    is not the gate), and the shift compounds with depth. One forward pass of the teacher
    records, per BatchNorm, the mean and std of its output over `inputs`; one forward pass of
    the student then corrects each BatchNorm in order (gamma, beta rescaled so its output has
    the teacher's statistics), every layer seeing the already-corrected layers before it. Only
    the BN affine parameters change; the architecture is paired by module name. Returns the
    number of BatchNorms aligned.
    """
    wanted: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name, module in teacher.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            hooks.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: wanted.__setitem__(name, (out.mean((0, 2, 3)), out.std((0, 2, 3))))))
    was = teacher.training, student.training
    teacher.eval()
    student.eval()
    try:
        teacher(inputs)
    finally:
        for h in hooks:
            h.remove()
    hooks, aligned = [], []

    def correct(module, _inputs, out, name):
        if name not in wanted:
            return None
        mean_t, std_t = wanted[name]
        mean_s, std_s = out.mean((0, 2, 3)), out.std((0, 2, 3))
        gain = std_t / std_s.clamp_min(1e-6)
        module.weight.mul_(gain)
        module.bias.copy_(gain * (module.bias - mean_s) + mean_t)
        aligned.append(name)
        return (out - mean_s.view(1, -1, 1, 1)) * gain.view(1, -1, 1, 1) + mean_t.view(1, -1, 1, 1)

    for name, module in student.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: correct(m, i, o, name)))
    try:
        student(inputs)
    finally:
        for h in hooks:
            h.remove()
        teacher.train(was[0])
        student.train(was[1])
    return len(aligned)


def _block_outputs(model, store: list) -> list:
    """Forward hooks appending each MBConv block's output to `store` (cleared by the caller)."""
    return [block.register_forward_hook(lambda _m, _i, out: store.append(out)) for block in model.blocks]


def feature_loss(student_feats: list, teacher_feats: list) -> torch.Tensor:
    """Mean over blocks of the squared error, each normalised by the teacher's mean square."""
    terms = [F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-8) for s, t in zip(student_feats, teacher_feats)]
    return torch.stack(terms).mean()


def trainable_parameters(model: torch.nn.Module, which: str) -> list:
    """"all", or "bn": BatchNorm weight/bias and every bias (the rest frozen)."""
    if which == "all":
        return [p for p in model.parameters() if p.requires_grad]
    if which != "bn":
        raise ValueError(f"unknown recovery parameter set {which!r}; choose all or bn")
    chosen = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            keep = isinstance(module, torch.nn.BatchNorm2d) or name == "bias"
            p.requires_grad_(keep)
            if keep:
                chosen.append(p)
    return chosen


def distill(student: torch.nn.Module, teacher: torch.nn.Module, crops: np.ndarray, spec: PreprocessSpec,
            settings: RecoverySettings, quiet: bool = False) -> RecoveryResult:
    """Fine-tune `student` in place towards `teacher` on uint8 crops (N, H, W, 3)."""
    if len(crops) == 0:
        raise ValueError("recovery needs at least one image")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    spec = spec.with_layout("NCHW", "float32")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if settings.align:  # in eval mode, whatever the training mode set below
        count = min(len(crops), settings.align_images)
        pick = torch.randperm(len(crops), generator=gen)[:count].sort().values.numpy()
        align_statistics(student, teacher, torch.from_numpy(spec.to_model_input(crops[pick])))
    student.train(not settings.freeze_bn)
    if not settings.freeze_bn:
        student.dropout.eval()  # only BN statistics move; dropout stays off
    params = trainable_parameters(student, settings.train)
    t_feats: list = []
    s_feats: list = []
    hooks = []
    if settings.feature_weight > 0:
        hooks = _block_outputs(teacher, t_feats) + _block_outputs(student, s_feats)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)

    simulation = contextlib.ExitStack()
    budget_s = settings.minutes * 60 if settings.minutes else math.inf
    planned = settings.steps
    quant_from = quant_aware_start(planned, settings.quant_aware)
    planned_from_time = planned is None
    total_for_schedule = planned or 10 ** 9  # warm-up lr does not depend on it
    order = torch.randperm(len(crops), generator=gen)
    cursor = 0
    losses: list[float] = []
    start = time.perf_counter()
    timing_start = None
    stopped_by_time = False
    step = 0
    bar = progress(None, desc="distilling", unit="step", quiet=quiet, total=planned)
    try:
        while planned is None or step < planned:
            if time.perf_counter() - start > budget_s:
                stopped_by_time = True
                break
            if step == quant_from:
                # Its own generator: the training batches stay those of a float-only run with the same seed.
                range_gen = torch.Generator().manual_seed(settings.seed + 1)
                range_pick = torch.randperm(len(crops), generator=range_gen)[:settings.range_images].sort().values.numpy()
                ranges = activation_ranges(student, list(torch_batches(crops[range_pick], spec, settings.batch)),
                                           get_recipe(SIMULATION_RECIPE))
                simulation.enter_context(simulated_int8(student, ranges))
                say(f"recovery: INT8 simulated from step {step} on (quantization-aware, "
                    f"ranges from {len(range_pick)} images)")
            if cursor + settings.batch > len(order):
                order = torch.randperm(len(crops), generator=gen)
                cursor = 0
            idx = order[cursor:cursor + settings.batch].numpy()
            cursor += settings.batch
            x = torch.from_numpy(spec.to_model_input(crops[np.sort(idx)]))
            x = augment_batch(x, settings.augment, gen, settings.min_area)
            t_feats.clear()
            s_feats.clear()
            with torch.no_grad():
                target = teacher(x)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_for_schedule, settings.lr)
            loss = kd_loss(student(x), target, settings.temperature)
            if settings.feature_weight > 0:
                loss = loss + settings.feature_weight * feature_loss(s_feats, t_feats)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if step == 1:
                timing_start = time.perf_counter()
            if planned is None and step == WARMUP_STEPS:
                per_step = (time.perf_counter() - timing_start) / (WARMUP_STEPS - 1)
                remaining = budget_s - (time.perf_counter() - start)
                # 10% spare: later steps ran ~5% slower than the warm-up's (all parameters,
                # idle machine), and a plan cut short by the clock never finishes its schedule.
                if quant_from is None:  # warm-up ran in float; the simulated steps will be slower
                    per_step *= 1 + settings.quant_aware * (SIMULATION_COST - 1)
                planned = WARMUP_STEPS + max(0, int(0.90 * remaining / per_step))
                total_for_schedule = planned
                start_at = quant_aware_start(planned, settings.quant_aware)
                if quant_from is None and start_at is not None:
                    quant_from = max(step, start_at)
                bar.total = planned
                bar.refresh()
                say(f"recovery: {per_step:.1f} s/step here{' (on average, simulated steps included)' if start_at else ''}, "
                    f"planning {planned} steps for "
                    f"{settings.minutes:g} min (reproduce with --recover-steps {planned})")
            if step % 25 == 0:
                recent = losses[-25:]
                say(f"recovery step {step}/{planned}: KD loss {sum(recent) / len(recent):.4f} "
                    f"({time.perf_counter() - start:.0f} s)")
    finally:
        simulation.close()  # the student's own parameters, clean state dict
        bar.close()
        for h in hooks:
            h.remove()
        for p in student.parameters():
            p.requires_grad_(True)
        student.eval()
    if stopped_by_time:
        say(f"recovery: time budget reached after {step} of {planned or '?'} steps; the learning-rate schedule "
            f"did not finish (--recover-steps N alone gives a run that is the same on any machine load)")
    return RecoveryResult(steps_done=step, steps_planned=planned or step, planned_from_time=planned_from_time,
                          stopped_by_time=stopped_by_time, seconds=time.perf_counter() - start,
                          quant_aware_from_step=quant_from if quant_from is not None and quant_from < step else None,
                          loss_first=losses[0] if losses else float("nan"),
                          loss_last=float(np.mean(losses[-10:])) if losses else float("nan"), losses=losses)


def save_recovered(model, path, extra: dict | None = None) -> None:
    """edgeeff layout, wrapped with what the loader needs to rebuild the architecture."""
    meta = {"variant": model.variant.name, "act": model.act_name, "se": bool(model.se_enabled),
            "same_padding": bool(model.same_padding), "bn_eps": float(model.bn_eps)}
    meta.update(extra or {})
    torch.save({"state_dict": model.state_dict(), "edgeeff": meta}, path)
