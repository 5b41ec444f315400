"""Model surgery: turn a loaded EfficientNet into its quantization-friendly variant.

  swap_activation(model, "hswish")   every activation (stem, blocks, SE's inner one, head)
  remove_se(model, crops, spec)      squeeze-excitation blocks out; each block's gate is measured
                                     on the calibration images and its per-channel mean folded into
                                     the following project conv (exact when the gate is constant)

Both edit the model in place and keep `model.act_name` / `model.se_enabled` right, so
`describe()` and the report say what the model now is. The SE gate (sigmoid) is kept for
`--se keep`: the variants this module targets drop SE altogether.

Why the mean gate is folded even when the gate varies: an SE block multiplies channel c by
g_c(x) in (0, 1), typically around 0.3-0.7. Deleting the block replaces g_c(x) by 1, scaling
every channel up by 2-3x and wrecking the network; replacing it by its mean over real images is
the best constant in the least-squares sense and is exact for a constant gate. Measured in
docs/variants.md: on the B0 test model, mean folding keeps far more accuracy than plain
deletion, and it is the starting point recovery then fine-tunes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..choices import SE_CHOICES
from ..data.preprocess import PreprocessSpec
from ..scoring import torch_batches
from .builder import EfficientNet, MBConv, forward_with_hooks, make_activation, se_label
from .family import ACTIVATIONS, Variant

# Largest per-channel standard deviation of a gate over the calibration images for which the
# block counts as constant (its fold is then exact to ~1e-3 of the activation).
DEFAULT_GATE_TOLERANCE = 1e-3


@dataclass
class SurgeryRecord:
    """What surgery did, for the report."""

    from_act: str
    from_se: bool
    act: str
    se: bool
    variant: Variant
    se_blocks: list[dict] = field(default_factory=list)  # per block: index, gate mean/std, "folded-exact"/"folded-mean"/"removed"

    def summary(self) -> dict:
        out = {"from": {"act": self.from_act, "se": se_label(self.from_se, self.variant)},
               "act": self.act, "se": se_label(self.se, self.variant)}
        if self.se_blocks:
            kinds = [b["action"] for b in self.se_blocks]
            out["se_blocks"] = {k: kinds.count(k) for k in sorted(set(kinds))}
            out["se_gate_std_max"] = round(max(b.get("gate_std_max", 0.0) for b in self.se_blocks), 6)
        return out


def _check_model(model) -> None:
    if not isinstance(model, EfficientNet):
        raise TypeError(f"surgery works on edgeeff EfficientNet modules, not {type(model).__name__}")


def swap_activation(model: EfficientNet, act: str) -> int:
    """Replace every activation with `act` (SE's inner one too; its sigmoid gate stays). Returns the count."""
    _check_model(model)
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")
    swapped = 0
    for module in model.modules():
        if not hasattr(module, "act") or isinstance(module, EfficientNet):
            continue
        if isinstance(module.act, nn.Identity):  # the project conv has no activation
            continue
        module.act = make_activation(act)
        swapped += 1
    model.act_name = act
    return swapped


@torch.no_grad()
def gate_statistics(model: EfficientNet, crops: np.ndarray, spec: PreprocessSpec,
                    batch: int = 32) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per SE block: (mean, std) of its gate over the images, per channel."""
    _check_model(model)
    sums: dict[int, list] = {}
    hooks = []
    for index, block in enumerate(model.blocks):
        if block.se is None:
            continue
        sums[index] = [0.0, 0.0, 0]

        def hook(_module, _inputs, output, index=index):
            gate = output.detach().double().flatten(1)  # (N, C): the sigmoid's output
            acc = sums[index]
            acc[0] = acc[0] + gate.sum(0)
            acc[1] = acc[1] + (gate * gate).sum(0)
            acc[2] += gate.shape[0]

        hooks.append(block.se.gate.register_forward_hook(hook))
    forward_with_hooks(model, hooks, torch_batches(crops, spec, batch))
    stats = {}
    for index, (s, sq, n) in sums.items():
        mean = s / n
        var = (sq / n - mean * mean).clamp_min(0)
        stats[index] = (mean.float(), var.sqrt().float())
    return stats


@torch.no_grad()
def fold_gate(block: MBConv, gate: torch.Tensor) -> None:
    """Multiply the project conv's input channels by a constant gate and drop the SE block.

    project(x * g) == project'(x) with W'[:, c] = W[:, c] * g[c]: exact for a constant gate.
    """
    weight = block.project.conv.weight  # (out, mid, 1, 1)
    weight.mul_(gate.to(weight.dtype).view(1, -1, 1, 1))
    block.se = None


def remove_se(model: EfficientNet, crops: np.ndarray | None = None, spec: PreprocessSpec | None = None,
              tolerance: float = DEFAULT_GATE_TOLERANCE, fold_mean: bool = True) -> list[dict]:
    """Remove every SE block. With images: fold each block's mean gate (see the module docstring).

    A block whose gate varies less than `tolerance` (largest per-channel std over the images) is
    folded exactly ("folded-exact"); otherwise its mean gate is folded as the best constant
    ("folded-mean"), or, with fold_mean=False, the block is simply removed ("removed").
    Without images every block is removed.
    """
    _check_model(model)
    stats = gate_statistics(model, crops, spec) if crops is not None and len(crops) else {}
    record = []
    for index, block in enumerate(model.blocks):
        if block.se is None:
            continue
        if index in stats:
            mean, std = stats[index]
            std_max = float(std.max())
            entry = {"block": index, "gate_mean": round(float(mean.mean()), 4), "gate_std_max": round(std_max, 6)}
            if std_max <= tolerance:
                fold_gate(block, mean)
                entry["action"] = "folded-exact"
            elif fold_mean:
                fold_gate(block, mean)
                entry["action"] = "folded-mean"
            else:
                block.se = None
                entry["action"] = "removed"
        else:
            block.se = None
            entry = {"block": index, "action": "removed"}
        record.append(entry)
    model.se_enabled = False
    return record


def make_variant(model: EfficientNet, act: str | None = None, se: str | None = None,
                 crops: np.ndarray | None = None, spec: PreprocessSpec | None = None,
                 tolerance: float = DEFAULT_GATE_TOLERANCE, fold_mean: bool = True) -> SurgeryRecord:
    """Apply --act / --se to a loaded model in place. SE is handled first: its gates are measured
    with the model's own activations, as trained."""
    _check_model(model)
    if se is not None and se not in SE_CHOICES:
        raise ValueError(f"unknown --se {se!r}; choose keep or remove")
    # `--se keep` keeps what the model has (nothing, for Lite): it never adds blocks.
    record = SurgeryRecord(from_act=model.act_name, from_se=model.se_enabled,
                           act=act or model.act_name, se=model.se_enabled and se != "remove", variant=model.variant)
    if se == "remove" and model.se_enabled:
        record.se_blocks = remove_se(model, crops, spec, tolerance, fold_mean)
    if act and act != model.act_name:
        swap_activation(model, act)
    return record


def needs_surgery(model: EfficientNet, act: str | None, se: str | None) -> bool:
    return bool((act and act != model.act_name) or (se == "remove" and model.se_enabled))
