"""The EfficientNet family as data: stage tables plus scaling coefficients per variant.

B0-B7 come from compound scaling of B0 (Tan & Le, 2019); Lite0-4 from the same table with the
changes Google made for edge devices (ReLU6, no squeeze-excitation, stem and head not scaled,
first and last stage not repeated more). EfficientNetV2 (Tan & Le, 2021) adds a block kind per
stage: Fused-MBConv (one full 3x3 conv instead of expand 1x1 + depthwise 3x3, no SE) in the early
stages; its tables are those of google/automl efficientnetv2/effnetv2_configs.py (Base, the one
V2-B0..B3 scale, and S, M, L). Everything the builder needs to know about a variant is in this
file, its preprocessing spec included; `builder.build_model` turns it into a module.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from ..data.preprocess import PreprocessSpec

MBCONV = "mbconv"
FUSED = "fused"
# timm's EdgeResidual at expand ratio 1 (`er_r2_k3_s1_e1_c24`, efficientnetv2_rw_s/m's first stage):
# a Fused-MBConv that keeps both convs, kxk and project 1x1, where FUSED at ratio 1 is one kxk conv.
EDGE = "edge"


@dataclass(frozen=True)
class StageConfig:
    """One stage of blocks before width/depth scaling; `block` is MBCONV (expand 1x1, depthwise,
    SE, project 1x1) or FUSED (Fused-MBConv: expand kxk, project 1x1; a single kxk conv when the
    expand ratio is 1; never SE)."""

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int
    block: str = MBCONV


# EfficientNet-B0, Table 1 of the paper (stage 1 is the stem, stage 9 the head).
B0_STAGES: tuple[StageConfig, ...] = (
    StageConfig(expand_ratio=1, kernel=3, stride=1, in_channels=32, out_channels=16, repeats=1),
    StageConfig(expand_ratio=6, kernel=3, stride=2, in_channels=16, out_channels=24, repeats=2),
    StageConfig(expand_ratio=6, kernel=5, stride=2, in_channels=24, out_channels=40, repeats=2),
    StageConfig(expand_ratio=6, kernel=3, stride=2, in_channels=40, out_channels=80, repeats=3),
    StageConfig(expand_ratio=6, kernel=5, stride=1, in_channels=80, out_channels=112, repeats=3),
    StageConfig(expand_ratio=6, kernel=5, stride=2, in_channels=112, out_channels=192, repeats=4),
    StageConfig(expand_ratio=6, kernel=3, stride=1, in_channels=192, out_channels=320, repeats=1),
)

# EfficientNetV2, google/automl efficientnetv2/effnetv2_configs.py (`v2_base_block`, `v2_s_block`,
# `v2_m_block`, `v2_l_block`): kernel 3 everywhere, SE 0.25 only in the MBConv stages.
_F, _M = FUSED, MBCONV
V2_BASE_STAGES: tuple[StageConfig, ...] = tuple(StageConfig(*row) for row in (
    (1, 3, 1, 32, 16, 1, _F), (4, 3, 2, 16, 32, 2, _F), (4, 3, 2, 32, 48, 2, _F),
    (4, 3, 2, 48, 96, 3, _M), (6, 3, 1, 96, 112, 5, _M), (6, 3, 2, 112, 192, 8, _M)))
V2_S_STAGES: tuple[StageConfig, ...] = tuple(StageConfig(*row) for row in (
    (1, 3, 1, 24, 24, 2, _F), (4, 3, 2, 24, 48, 4, _F), (4, 3, 2, 48, 64, 4, _F),
    (4, 3, 2, 64, 128, 6, _M), (6, 3, 1, 128, 160, 9, _M), (6, 3, 2, 160, 256, 15, _M)))
V2_M_STAGES: tuple[StageConfig, ...] = tuple(StageConfig(*row) for row in (
    (1, 3, 1, 24, 24, 3, _F), (4, 3, 2, 24, 48, 5, _F), (4, 3, 2, 48, 80, 5, _F),
    (4, 3, 2, 80, 160, 7, _M), (6, 3, 1, 160, 176, 14, _M), (6, 3, 2, 176, 304, 18, _M),
    (6, 3, 1, 304, 512, 5, _M)))
V2_L_STAGES: tuple[StageConfig, ...] = tuple(StageConfig(*row) for row in (
    (1, 3, 1, 32, 32, 4, _F), (4, 3, 2, 32, 64, 7, _F), (4, 3, 2, 64, 96, 7, _F),
    (4, 3, 2, 96, 192, 10, _M), (6, 3, 1, 192, 224, 19, _M), (6, 3, 2, 224, 384, 25, _M),
    (6, 3, 1, 384, 640, 7, _M)))

# timm's own EfficientNetV2s (timm/models/efficientnet.py `_gen_efficientnetv2_s`): rw_t is V2-S's table
# scaled (0.8, 0.9); rw_s and rw_m ("rw=True", Ross Wightman's reading of the paper's figure before
# the official release) take an EdgeResidual first stage, 272 channels in the last, a 1792 head.
V2_RW_STAGES: tuple[StageConfig, ...] = (StageConfig(1, 3, 1, 24, 24, 2, EDGE), *V2_S_STAGES[1:5],
                                         StageConfig(6, 3, 2, 160, 272, 15, MBCONV))

STEM_CHANNELS = 32  # V1; V2's stem is its first stage's input width (effnetv2_model.py, Stem)
HEAD_CHANNELS = 1280  # V1 and V2
SE_RATIO = 0.25  # squeeze width relative to the block's *input* channels, as in the paper
ACTIVATIONS = ("swish", "hswish", "relu6")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Variant:
    """A member of the family: its scaling coefficients and the defaults that come with it."""

    name: str
    width: float
    depth: float
    resolution: int  # evaluation resolution
    dropout: float
    lite: bool = False
    stages: tuple[StageConfig, ...] = B0_STAGES
    train_resolution: int | None = None  # V2's published training size; None: the evaluation one
    aliases: tuple[str, ...] = ()
    head: int = HEAD_CHANNELS  # before width scaling
    stage_depths: tuple[float, ...] | None = None  # a depth coefficient per stage (timm's rw_m), else `depth`
    channel_round_limit: float | None = None  # None: V1's 0.9, V2's 0.0 (round_limit)

    @property
    def v2(self) -> bool:
        return self.stages is not B0_STAGES

    @property
    def round_limit(self) -> float:
        # V1's round_filters never rounds down by more than 10%; V2's (effnetv2_model.py) has no such
        # rule, nor timm's V2 Base (round_limit=0.)
        if self.channel_round_limit is not None:
            return self.channel_round_limit
        return 0.0 if self.v2 else 0.9

    @property
    def default_act(self) -> str:
        return "relu6" if self.lite else "swish"

    @property
    def default_se(self) -> bool:
        return not self.lite

    @property
    def mean(self) -> tuple[float, float, float]:
        # Lite was trained on [-1, 1] inputs; B0-B7 on ImageNet mean/std.
        return LITE_MEAN if self.lite else IMAGENET_MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        return LITE_STD if self.lite else IMAGENET_STD

    @property
    def crop_pct(self) -> float:
        # TF's EfficientNet evaluation crops resolution / (resolution + 32) of the shorter side.
        return self.resolution / (self.resolution + 32)


def _v2(size, stages, width, depth, train, resolution, dropout):
    """A V2 variant, with the names users type for it: timm's (`efficientnetv2_s`,
    `tf_efficientnetv2_s`), TF's (`efficientnetv2-s`) and torchvision's (`efficientnet_v2_s`)."""
    aliases = (f"efficientnetv2_{size}", f"tf_efficientnetv2_{size}", f"efficientnetv2-{size}")
    if size in ("s", "m", "l"):
        aliases += (f"efficientnet_v2_{size}",)
    return Variant(f"v2-{size}", width, depth, resolution, dropout, stages=stages, train_resolution=train,
                   aliases=aliases)


def _v2_rw(size, width, depth, train, resolution, stage_depths=None):
    """timm's efficientnetv2_rw_{t,s,m}: trained in PyTorch (padding symmetric, eps 1e-5, from the
    name), channels rounded as timm's round_channels does (never down by more than 10%)."""
    rw = size != "t"  # rw_t is V2-S's own table, scaled
    return Variant(f"v2-rw-{size}", width, depth, resolution, 0.2, stages=V2_RW_STAGES if rw else V2_S_STAGES,
                   train_resolution=train, aliases=(f"efficientnetv2_rw_{size}",),
                   head=1792 if rw else HEAD_CHANNELS, stage_depths=stage_depths, channel_round_limit=0.9)


# (width, depth, resolution, dropout) as published for B0-B7 and Lite0-4.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("b0", 1.0, 1.0, 224, 0.2, lite=False),
        Variant("b1", 1.0, 1.1, 240, 0.2, lite=False),
        Variant("b2", 1.1, 1.2, 260, 0.3, lite=False),
        Variant("b3", 1.2, 1.4, 300, 0.3, lite=False),
        Variant("b4", 1.4, 1.8, 380, 0.4, lite=False),
        Variant("b5", 1.6, 2.2, 456, 0.4, lite=False),
        Variant("b6", 1.8, 2.6, 528, 0.5, lite=False),
        Variant("b7", 2.0, 3.1, 600, 0.5, lite=False),
        Variant("lite0", 1.0, 1.0, 224, 0.2, lite=True),
        Variant("lite1", 1.0, 1.1, 240, 0.2, lite=True),
        Variant("lite2", 1.1, 1.2, 260, 0.3, lite=True),
        Variant("lite3", 1.2, 1.4, 280, 0.3, lite=True),
        Variant("lite4", 1.4, 1.8, 300, 0.3, lite=True),
        # effnetv2_configs.py `efficientnetv2_params`: (block, width, depth, train_size, eval_size, dropout)
        _v2("b0", V2_BASE_STAGES, 1.0, 1.0, 192, 224, 0.2),
        _v2("b1", V2_BASE_STAGES, 1.0, 1.1, 192, 240, 0.2),
        _v2("b2", V2_BASE_STAGES, 1.1, 1.2, 208, 260, 0.3),
        _v2("b3", V2_BASE_STAGES, 1.2, 1.4, 240, 300, 0.3),
        _v2("s", V2_S_STAGES, 1.0, 1.0, 300, 384, 0.2),
        _v2("m", V2_M_STAGES, 1.0, 1.0, 384, 480, 0.3),
        _v2("l", V2_L_STAGES, 1.0, 1.0, 384, 480, 0.4),
        # timm's default_cfgs: (train input_size, test_input_size) 224/288, 288/384, 320/416
        _v2_rw("t", 0.8, 0.9, 224, 288),
        _v2_rw("s", 1.0, 1.0, 288, 384),
        _v2_rw("m", 1.2, 1.0, 320, 416, stage_depths=(1.2,) * 4 + (1.6,) * 2),
    )
}
ALIASES: dict[str, str] = {alias: v.name for v in VARIANTS.values() for alias in v.aliases}


def resolve_variant(name: str) -> str:
    """The family member a name means: its own name or an alias (`tf_efficientnetv2_s` -> `v2-s`);
    unknown names are returned unchanged, for the caller's "unknown variant" error."""
    return name if name in VARIANTS else ALIASES.get(name.lower(), name)


def round_channels(channels: int, width: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Scale a channel count by `width` and round to a multiple of `divisor` (TF's round_filters)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < round_limit * scaled:  # V1: never round down by more than 10%
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by `depth`, rounding up (TF's round_repeats)."""
    return int(math.ceil(depth * repeats))


@dataclass(frozen=True)
class BlockPlan:
    """One MBConv block after scaling: what the builder instantiates."""

    stage: int
    in_channels: int
    out_channels: int
    expand_ratio: int
    kernel: int
    stride: int
    kind: str = MBCONV

    @property
    def mid_channels(self) -> int:
        return self.in_channels * self.expand_ratio

    @property
    def se_channels(self) -> int:
        return max(1, int(self.in_channels * SE_RATIO))

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def _round(channels: int, variant: Variant) -> int:
    return round_channels(channels, variant.width, round_limit=variant.round_limit)


def stem_channels(variant: Variant) -> int:
    if variant.lite:
        return STEM_CHANNELS
    return _round(variant.stages[0].in_channels if variant.v2 else STEM_CHANNELS, variant)


def head_channels(variant: Variant) -> int:
    return HEAD_CHANNELS if variant.lite else _round(variant.head, variant)


def block_plan(variant: Variant) -> list[BlockPlan]:
    """The scaled list of blocks for a variant, in execution order."""
    blocks: list[BlockPlan] = []
    last_stage = len(variant.stages) - 1
    for index, stage in enumerate(variant.stages):
        in_ch = _round(stage.in_channels, variant)
        out_ch = _round(stage.out_channels, variant)
        if variant.lite and index == 0:
            in_ch = stem_channels(variant)  # the fixed stem feeds the first stage
        if variant.lite and index in (0, last_stage):
            repeats = stage.repeats  # Lite keeps the first and last stage at B0 depth
        else:
            depth = variant.stage_depths[index] if variant.stage_depths else variant.depth
            repeats = round_repeats(stage.repeats, depth)
        for i in range(repeats):
            blocks.append(
                BlockPlan(
                    stage=index,
                    in_channels=in_ch if i == 0 else out_ch,
                    out_channels=out_ch,
                    expand_ratio=stage.expand_ratio,
                    kernel=stage.kernel,
                    stride=stage.stride if i == 0 else 1,
                    kind=stage.block,
                )
            )
    return blocks


def nearest_names(name: str, choices) -> str:
    """A 'did you mean' suffix for unknown names, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=2, cutoff=0.5)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


# How the published V2 weights were evaluated, by where they come from: (crop_pct, interpolation,
# mean, std) at the variant's evaluation resolution. timm: default_cfgs of tf_efficientnetv2_*.in1k
# in timm/models/efficientnet.py (B0 takes _cfg's default crop 0.875 and ImageNet mean/std; S/M/L
# crop 1.0 and mean/std 0.5; all bicubic). torchvision: EfficientNet_V2_{S,M,L}_Weights.transforms
# (resize = crop = 384/480, so crop 1.0; S and M bilinear with ImageNet mean/std, L bicubic with 0.5).
# timm's M and L also "squash" (resize both sides) where edgeeff keeps the aspect ratio and crops.
V2_PREPROCESS: dict[str, dict[str, tuple]] = {
    "timm": {"v2-b0": (0.875, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
             "v2-b1": (0.882, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
             "v2-b2": (0.890, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
             "v2-b3": (0.904, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
             "v2-s": (1.0, "bicubic", LITE_MEAN, LITE_STD),
             "v2-m": (1.0, "bicubic", LITE_MEAN, LITE_STD),
             "v2-l": (1.0, "bicubic", LITE_MEAN, LITE_STD),
             "v2-rw-t": (1.0, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
             "v2-rw-s": (1.0, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
             "v2-rw-m": (1.0, "bicubic", IMAGENET_MEAN, IMAGENET_STD)},
    "torchvision": {"v2-s": (1.0, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
                    "v2-m": (1.0, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
                    "v2-l": (1.0, "bicubic", LITE_MEAN, LITE_STD)},
}


def spec_for_variant(variant: str, weights_format: str | None = None) -> PreprocessSpec:
    """The preprocessing a variant declares (its resolution, crop and normalisation): the spec
    calibration, validation and the device all use. For V2 it depends on where the weights come
    from (`weights_format`): torchvision's own transforms for its files, else timm's (the TF ports)."""
    v = VARIANTS[resolve_variant(variant)]
    if v.v2:
        source = "torchvision" if weights_format == "torchvision" and v.name in V2_PREPROCESS["torchvision"] else "timm"
        crop_pct, interpolation, mean, std = V2_PREPROCESS[source][v.name]
        return PreprocessSpec(resolution=v.resolution, crop_pct=crop_pct, interpolation=interpolation,
                              mean=mean, std=std)
    return PreprocessSpec(resolution=v.resolution, crop_pct=round(v.crop_pct, 4), interpolation="bicubic",
                          mean=v.mean, std=v.std)
