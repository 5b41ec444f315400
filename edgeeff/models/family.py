"""The EfficientNet family as data: one B0 stage table plus scaling coefficients per variant.

B0-B7 come from compound scaling of B0 (Tan & Le, 2019); Lite0-4 from the same table with the
changes Google made for edge devices (ReLU6, no squeeze-excitation, stem and head not scaled,
first and last stage not repeated more). Everything the builder needs to know about a variant
is in this file, its preprocessing spec included; `builder.build_model` turns it into a module.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from ..data.preprocess import PreprocessSpec


@dataclass(frozen=True)
class StageConfig:
    """One stage of MBConv blocks at B0 scale (before width/depth scaling)."""

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


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
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
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
    resolution: int
    dropout: float
    lite: bool

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
    )
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width` and round to a multiple of `divisor` (TF's round_filters)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
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

    @property
    def mid_channels(self) -> int:
        return self.in_channels * self.expand_ratio

    @property
    def se_channels(self) -> int:
        return max(1, int(self.in_channels * SE_RATIO))

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def stem_channels(variant: Variant) -> int:
    return STEM_CHANNELS if variant.lite else round_channels(STEM_CHANNELS, variant.width)


def head_channels(variant: Variant) -> int:
    return HEAD_CHANNELS if variant.lite else round_channels(HEAD_CHANNELS, variant.width)


def block_plan(variant: Variant) -> list[BlockPlan]:
    """The scaled list of blocks for a variant, in execution order."""
    blocks: list[BlockPlan] = []
    last_stage = len(B0_STAGES) - 1
    for index, stage in enumerate(B0_STAGES):
        in_ch = round_channels(stage.in_channels, variant.width)
        out_ch = round_channels(stage.out_channels, variant.width)
        if variant.lite and index == 0:
            in_ch = stem_channels(variant)  # the fixed stem feeds the first stage
        if variant.lite and index in (0, last_stage):
            repeats = stage.repeats  # Lite keeps the first and last stage at B0 depth
        else:
            repeats = round_repeats(stage.repeats, variant.depth)
        for i in range(repeats):
            blocks.append(
                BlockPlan(
                    stage=index,
                    in_channels=in_ch if i == 0 else out_ch,
                    out_channels=out_ch,
                    expand_ratio=stage.expand_ratio,
                    kernel=stage.kernel,
                    stride=stage.stride if i == 0 else 1,
                )
            )
    return blocks


def nearest_names(name: str, choices) -> str:
    """A 'did you mean' suffix for unknown names, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=2, cutoff=0.5)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def spec_for_variant(variant: str) -> PreprocessSpec:
    """The preprocessing a variant declares (its resolution, crop and normalisation): the spec
    calibration, validation and the device all use."""
    v = VARIANTS[variant]
    return PreprocessSpec(resolution=v.resolution, crop_pct=round(v.crop_pct, 4), interpolation="bicubic",
                          mean=v.mean, std=v.std)
