"""One builder for the whole family: `build_model(variant, act=..., se=...)`.

Module names are edgeeff's own (`stem.conv`, `blocks.3.dw.bn`, `blocks.3.se.reduce`, ...); the
loaders in `weights.py` map timm, torchvision, lukemelas and TF checkpoints onto them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .family import (
    ACTIVATIONS,
    EDGE,
    FUSED,
    VARIANTS,
    BlockPlan,
    Variant,
    block_plan,
    head_channels,
    resolve_variant,
    stem_channels,
)

# TF-trained weights (every published EfficientNet, including Lite) use TF's BatchNorm epsilon
# and "same" padding; PyTorch-trained ones (timm's non-tf_ models, torchvision) use 1e-5 and
# symmetric padding. Getting either wrong costs accuracy before quantization even starts.
TF_BN_EPS = 1e-3
TORCH_BN_EPS = 1e-5


# Activations the integer runtimes fuse into the conv before them (no activation: Identity), so
# the conv's own output is never stored: quant.simulation and quant.scale_groups treat these alike.
FUSED_ACTIVATIONS = (nn.ReLU6, nn.ReLU, nn.Identity)


def make_activation(name: str) -> nn.Module:
    if name == "swish":
        return nn.SiLU()
    if name == "hswish":
        return nn.Hardswish()
    if name == "relu6":
        return nn.ReLU6()
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding.

    TF pads stride-2 convolutions asymmetrically (the extra pixel goes bottom/right), which
    PyTorch's symmetric `padding=` cannot express. When the padding happens to be symmetric
    (every stride-1 conv) it is passed to the convolution itself, so the exported graph has no
    separate Pad node there.
    """

    def __init__(self, *args, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(*args, padding=0, **kwargs)

    def _pads(self, size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pads(int(x.shape[-2]), self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = self._pads(int(x.shape[-1]), self.kernel_size[1], self.stride[1], self.dilation[1])
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvBNAct(nn.Module):
    """conv -> batch norm -> optional activation; the unit every EfficientNet layer is made of."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, groups=1, act: str | None = None,
                 same_padding=True, bn_eps=TF_BN_EPS):
        super().__init__()
        if same_padding:
            self.conv = SamePadConv2d(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)
        else:
            self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2,
                                  groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps)
        self.act = make_activation(act) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> reduce -> act -> expand -> sigmoid -> scale the input."""

    def __init__(self, channels: int, squeeze: int, act: str):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1, bias=True)
        self.act = make_activation(act)
        self.expand = nn.Conv2d(squeeze, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 (+ residual).

    Fused-MBConv (EfficientNetV2, `plan.kind == FUSED`) is the same block with the expand conv
    taking the depthwise conv's kernel and stride and no depthwise conv (`dw` is None) nor SE:
    expand kxk -> project 1x1; with expand ratio 1 the project conv alone is the kxk conv, with
    the activation (effnetv2_model.py FusedMBConvBlock), except for EDGE (timm's EdgeResidual),
    which keeps the kxk expand conv at ratio 1.
    """

    def __init__(self, plan: BlockPlan, act: str, se: bool, same_padding: bool, bn_eps: float):
        super().__init__()
        mid = plan.mid_channels
        conv = dict(same_padding=same_padding, bn_eps=bn_eps)
        fused = plan.kind in (FUSED, EDGE)
        single_conv = plan.kind == FUSED and plan.expand_ratio == 1
        if plan.expand_ratio == 1 and plan.kind != EDGE:
            self.expand = None
        elif fused:
            self.expand = ConvBNAct(plan.in_channels, mid, plan.kernel, stride=plan.stride, act=act, **conv)
        else:
            self.expand = ConvBNAct(plan.in_channels, mid, 1, act=act, **conv)
        self.dw = None if fused else ConvBNAct(mid, mid, plan.kernel, stride=plan.stride, groups=mid, act=act, **conv)
        self.se = SqueezeExcite(mid, plan.se_channels, act) if se and not fused else None
        if single_conv:
            self.project = ConvBNAct(mid, plan.out_channels, plan.kernel, stride=plan.stride, act=act, **conv)
        else:
            self.project = ConvBNAct(mid, plan.out_channels, 1, act=None, **conv)
        self.has_residual = plan.has_residual

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        if self.dw is not None:
            y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        # Drop-connect only matters in training; inference adds the identity unchanged.
        return x + y if self.has_residual else y


def se_label(se_enabled: bool, variant: Variant) -> str:
    """How a model's squeeze-excitation is reported: keep, remove (a B model without it), or none
    for Lite, which never had SE ("remove" would claim a surgery that did not happen)."""
    return "keep" if se_enabled else "none" if variant.lite else "remove"


class EfficientNet(nn.Module):
    def __init__(self, variant: Variant, act: str, se: bool, num_classes: int = 1000,
                 same_padding: bool = True, bn_eps: float = TF_BN_EPS):
        super().__init__()
        self.variant = variant
        self.act_name = act
        self.se_enabled = se
        self.same_padding = same_padding
        self.bn_eps = bn_eps
        plans = block_plan(variant)
        conv = dict(same_padding=same_padding, bn_eps=bn_eps)
        self.stem = ConvBNAct(3, stem_channels(variant), 3, stride=2, act=act, **conv)
        self.blocks = nn.ModuleList(MBConv(p, act, se, same_padding, bn_eps) for p in plans)
        self.head = ConvBNAct(plans[-1].out_channels, head_channels(variant), 1, act=act, **conv)
        self.dropout = nn.Dropout(variant.dropout)
        self.classifier = nn.Linear(head_channels(variant), num_classes)

    def features(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward(self, x):
        x = self.features(x).mean((2, 3))
        return self.classifier(self.dropout(x))

    def state_dict_digest(self) -> str:
        """A hash of every weight: identifies this exact model in caches (random or surgered ones too)."""
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in self.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        return digest.hexdigest()

    def describe(self) -> dict:
        return {"variant": self.variant.name, "act": self.act_name,
                "se": se_label(self.se_enabled, self.variant),
                "padding": "same" if self.same_padding else "symmetric", "bn_eps": self.bn_eps}


def build_model(variant: str | Variant, act: str | None = None, se: bool | None = None,
                num_classes: int = 1000, same_padding: bool = True, bn_eps: float = TF_BN_EPS) -> EfficientNet:
    """Build any family member; `act` and `se` default to the variant's own (swish+SE, Lite: ReLU6, no SE)."""
    v = VARIANTS[resolve_variant(variant)] if isinstance(variant, str) else variant
    model = EfficientNet(v, act or v.default_act, v.default_se if se is None else se, num_classes,
                         same_padding, bn_eps)
    return model.eval()


@torch.no_grad()
def forward_with_hooks(model: nn.Module, hooks: list, batches) -> None:
    """Run `model` in eval mode over `batches` for what its forward `hooks` observe; the hooks are
    removed and the model's train/eval mode restored afterwards, whatever happens."""
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: EfficientNet, resolution: int | None = None) -> int:
    """Multiply-accumulates of one forward pass at the variant's resolution (convs and the classifier)."""
    res = resolution or model.variant.resolution
    macs = 0

    def conv_hook(module: nn.Conv2d, _inputs, output):
        nonlocal macs
        kh, kw = module.kernel_size
        macs += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs, output):
        nonlocal macs
        macs += module.in_features * module.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, res, res))
    finally:
        for h in hooks:
            h.remove()
    return macs
