"""Scale groups: give a wide-ranged tensor's channels more than one INT8 scale, exactly.

Every runtime edgeeff targets stores an activation tensor with one INT8 scale (per-tensor), while
weights get one per channel. When a tensor's channels have very different ranges, the narrow
channels get only a handful of the 256 levels. On the hard-swish B0 variant the stem conv's 32
output channels reach maxima from 2 to 72 (docs/variants.md): a channel that peaks at 6 gets
about 35 levels, and that one tensor is the largest single INT8 cost in the model.

The fix here changes the graph, not the quantizer, so it works on every backend. Where a conv's
output (the stem, or a block's 1x1 expand conv) feeds a depthwise conv, each channel stays its
own channel up to the depthwise output. So the channels can be split into groups: a conv, its
BatchNorm and activation, then the depthwise conv and its activation, once per group, each group
computing only its own channels. The groups are concatenated before the block's 1x1 project conv,
whose input channels (and the SE block's, if any) are permuted to the concatenation's order. In
float this is the same function (the same multiply-adds, reordered). In INT8 each group's conv
and depthwise outputs get a scale fitted to its own channels.

Which channels go together is decided from the calibration images: channels are sorted by their
range and cut where the summed quantization noise, relative to each channel's own range, is
least (`best_split`). A site is split only where that noise falls by at least MIN_GAIN.

Only producers whose activation is stored after the conv are candidates: hard-swish and swish,
whose conv output is unbounded. A ReLU6 producer (Lite) stores its fused output, bounded to
[0, 6] in every channel by design: what is left to split off there is nearly dead channels,
which carry little. Measured on the hard-swish B0 variant (docs/variants.md): the real INT8
.tflite went from 92.31% to 94.62% top-1 agreement with its FP32 model, for 1.4% more latency
in LiteRT (ONNX Runtime: 16% more, so it is off for the onnx target).

The rewrite is for export only: `recovered.pth` and every report figure of the PyTorch model
keep the model's own layout.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.builder import FUSED_ACTIVATIONS, ConvBNAct, EfficientNet, MBConv, forward_with_hooks
from .calibration import HARD_SWISH_FLOOR

# A site is split only if the split divides its relative quantization noise (`noise_cost`) by at
# least this much. On the hard-swish B0 variant this picks 3 of 16 sites (stem, blocks 1 and 13);
# splitting all 12 sites with a gain of 4 or more measured the same agreement (94.77% against
# 94.62%) for four times the extra ops.
MIN_GAIN = 10.0
# Channels narrower than this fraction of the widest are counted at this width: a (nearly) dead
# channel carries nothing, and must not pull a cut towards itself.
NARROWEST = 1 / 64
# A channel's range is what it reaches on this fraction of the calibration images (channel_widths).
TYPICAL_IMAGE = 0.9


class GroupedPath(nn.Module):
    """conv -> BN -> act -> depthwise -> BN -> act, computed per channel group, then concatenated.

    Replaces a producer (the stem, or a block's expand conv) together with the depthwise conv after
    it; the block's own `dw` becomes an Identity."""

    def __init__(self, producers: list[ConvBNAct], depthwises: list[ConvBNAct], channels: list[list[int]]):
        super().__init__()
        self.producers = nn.ModuleList(producers)
        self.depthwises = nn.ModuleList(depthwises)
        self.channels = [list(c) for c in channels]  # original channel indices, group by group

    def forward(self, x):
        return torch.cat([dw(conv(x)) for conv, dw in zip(self.producers, self.depthwises)], 1)


@dataclass(frozen=True)
class Site:
    """Where a split can go: `producer` (a ConvBNAct) feeds block `block`'s depthwise conv."""

    name: str  # "stem" or "blocks.N.expand": the producer's module name
    block: int


def sites(model: EfficientNet) -> list[Site]:
    """Every producer -> depthwise pair whose producer stores an unbounded tensor (activation not
    fused): the stem (block 0 has no expand conv in any variant) and each block's expand conv."""
    found = []
    first = model.blocks[0]
    # ConvBNAct checks: a site already split (a GroupedPath, an Identity dw) is not a site again.
    if first.expand is None and isinstance(model.stem, ConvBNAct) and isinstance(first.dw, ConvBNAct):
        found.append(Site("stem", 0))
    for index, block in enumerate(model.blocks):
        # A Fused-MBConv block (EfficientNetV2) has no depthwise conv: its expand conv is no site.
        if isinstance(block.expand, ConvBNAct) and block.dw is not None:
            found.append(Site(f"blocks.{index}.expand", index))
    return [s for s in found if not isinstance(_producer(model, s).act, FUSED_ACTIVATIONS)]


def _producer(model: EfficientNet, site: Site) -> ConvBNAct:
    return model.stem if site.name == "stem" else model.blocks[site.block].expand


def noise_cost(widths: np.ndarray, groups: list[np.ndarray]) -> float:
    """Summed squared INT8 step of each channel relative to its own range: sum_c (W_g / w_c)^2,
    W_g the range of channel c's group (the group shares one scale)."""
    floor = widths.max() * NARROWEST
    w = np.maximum(widths, floor)
    return float(sum(((w[g].max() / w[g]) ** 2).sum() for g in groups))


def best_split(widths: np.ndarray) -> tuple[list[np.ndarray], float]:
    """Channels sorted by width, cut in two where noise_cost is least. Returns (groups, gain):
    the groups (wide channels first) and how many times less noise than one group."""
    order = np.argsort(-widths, kind="stable")  # widest first; stable: deterministic ties
    whole = noise_cost(widths, [order])
    best, best_cost = [order], whole
    for cut in range(1, len(order)):
        groups = [np.sort(order[:cut]), np.sort(order[cut:])]
        cost = noise_cost(widths, groups)
        if cost < best_cost:
            best, best_cost = groups, cost
    return best, whole / best_cost


@torch.no_grad()
def _observe_sites(model: EfficientNet, found: list, batches, observe) -> None:
    """Run `batches` through `model`, calling observe(site name, tensor) with each site's tensor
    (its producer's output after BN). `observe` returns None: a forward hook's return value would
    replace the output."""
    hooks = [_producer(model, site).bn.register_forward_hook(
        lambda _m, _i, out, n=site.name: observe(n, out)) for site in found]
    forward_with_hooks(model, hooks, batches)


def channel_widths(model: EfficientNet, batches: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Per site, each channel's range width in the tensor the runtimes store after the producer:
    its conv output after BN (`sites` has only producers whose activation is not fused).

    A channel's high end is the TYPICAL_IMAGE quantile over the images of its per-image maximum
    (its low end likewise from the minima): what the channel reaches on most images, not one
    outlier. Zero is always in the range (as in every INT8 range), and a hard-swish input needs
    nothing below HARD_SWISH_FLOOR (calibration.py), where hard-swish is 0 whatever the value."""
    found = sites(model)
    if not found:  # a ReLU6 model: no forward pass for nothing
        return {}
    highs: dict[str, list] = {s.name: [] for s in found}
    lows: dict[str, list] = {s.name: [] for s in found}

    def observe(name, out):
        highs[name].append(out.amax((2, 3)))
        lows[name].append(out.amin((2, 3)))

    _observe_sites(model, found, batches, observe)
    widths = {}
    for site in found:
        high = torch.quantile(torch.cat(highs[site.name]).double(), TYPICAL_IMAGE, dim=0).clamp_min(0)
        low = torch.quantile(torch.cat(lows[site.name]).double(), 1 - TYPICAL_IMAGE, dim=0).clamp_max(0)
        if isinstance(_producer(model, site).act, nn.Hardswish):
            low = low.clamp_min(HARD_SWISH_FLOOR)
        widths[site.name] = (high - low).numpy()
    return widths


def _take_channels(unit: ConvBNAct, channels: list[int], depthwise: bool) -> ConvBNAct:
    """A copy of `unit` that computes only `channels` of its output (of its input too, if depthwise)."""
    part = copy.deepcopy(unit)
    index = torch.tensor(channels, dtype=torch.long)
    conv = part.conv
    conv.weight = nn.Parameter(conv.weight.data[index].clone())
    conv.out_channels = len(channels)
    if depthwise:
        conv.in_channels = conv.groups = len(channels)
    bn = part.bn
    for name in ("weight", "bias"):
        setattr(bn, name, nn.Parameter(getattr(bn, name).data[index].clone()))
    bn.running_mean = bn.running_mean[index].clone()
    bn.running_var = bn.running_var[index].clone()
    bn.num_features = len(channels)
    return part


@torch.no_grad()
def _permute_consumers(block: MBConv, order: torch.Tensor) -> None:
    """The project conv (and SE) now read the channels in `order`: permute their input channels."""
    if block.se is not None:
        block.se.reduce.weight.data = block.se.reduce.weight.data[:, order].clone()
        block.se.expand.weight.data = block.se.expand.weight.data[order].clone()
        block.se.expand.bias.data = block.se.expand.bias.data[order].clone()
    block.project.conv.weight.data = block.project.conv.weight.data[:, order].clone()


def split_site(model: EfficientNet, site: Site, groups: list[list[int]]) -> None:
    """Rewrite one site in place into a GroupedPath over `groups` (original channel indices)."""
    block = model.blocks[site.block]
    producer = _producer(model, site)
    path = GroupedPath([_take_channels(producer, g, depthwise=False) for g in groups],
                       [_take_channels(block.dw, g, depthwise=True) for g in groups], groups)
    _permute_consumers(block, torch.tensor([c for g in groups for c in g], dtype=torch.long))
    if site.name == "stem":
        model.stem = path
    else:
        block.expand = path
    block.dw = nn.Identity()


@torch.no_grad()
def site_strides(model: EfficientNet, image: torch.Tensor) -> dict[str, int]:
    """Per site, how many input pixels one pixel of its tensor spans (2 for the stem, 32 for the
    last stage's expand convs), from one forward pass of `image` (1, 3, H, W)."""
    found = sites(model)
    widths: dict[str, int] = {}

    def observe(name, out):
        widths[name] = out.shape[-1]

    _observe_sites(model, found, [image], observe)
    return {name: max(1, round(image.shape[-1] / width)) for name, width in widths.items()}


def split_for_int8(model: EfficientNet, batches: list[torch.Tensor], min_gain: float | None = None,
                   max_sites: int | None = None, min_stride: int = 1,
                   widths: dict[str, np.ndarray] | None = None) -> tuple[EfficientNet, list[dict]]:
    """A copy of `model` with every site whose best two-group split gains at least `min_gain`
    split (the `max_sites` best if given); and, per split site, what was done for the report.
    The original model is untouched. `min_gain` defaults to MIN_GAIN. `min_stride`: only sites
    whose tensor is at least this many input pixels per pixel (site_strides). Why: a split costs
    in proportion to the tensor it splits and to how badly narrow groups fill a runtime's vector
    kernels; on ONNX Runtime the B0 test model's two stride-2 sites (112 x 112, groups of 10 and 17
    channels) made the INT8 file 25% slower, its stride-32 site cost nothing (docs/quantization.md).
    `widths`: channel_widths(model, batches), if already measured (the targets of one command share
    them: their settings may differ, the widths do not)."""
    min_gain = MIN_GAIN if min_gain is None else min_gain
    if not sites(model):
        return model, []
    widths = widths if widths is not None else channel_widths(model, batches)
    strides = site_strides(model, batches[0][:1]) if min_stride > 1 else {}
    plans = []
    for site in sites(model):
        groups, gain = best_split(widths[site.name])
        if gain >= min_gain and strides.get(site.name, min_stride) >= min_stride:
            plans.append((gain, site, [g.tolist() for g in groups]))
    plans.sort(key=lambda p: (-p[0], p[1].block))
    if max_sites is not None:
        plans = plans[:max_sites]
    split = copy.deepcopy(model)
    record = []
    for gain, site, groups in sorted(plans, key=lambda p: p[1].block):
        split_site(split, site, groups)
        w = widths[site.name]
        record.append({"site": site.name, "channels": [len(g) for g in groups], "noise_gain": round(gain, 2),
                       "group_widths": [round(float(w[g].max()), 3) for g in groups]})
    return split.eval(), record
