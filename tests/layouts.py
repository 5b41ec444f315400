"""State dicts in timm's and torchvision's naming, written out from those libraries' module
structure (timm/models/_efficientnet_blocks.py, torchvision/models/efficientnet.py) independently
of edgeeff's loaders (edgeeff/models/weights.py), so a test that loads them checks the mapping
against the libraries rather than against itself. Shared by tests/test_weights.py (the mapping
per layout) and tests/test_v2_compile.py (compiles from such files)."""

from __future__ import annotations

from edgeeff.models.family import VARIANTS, block_plan

BN = ("weight", "bias", "running_mean", "running_var")


def _stages(variant):
    """(stage, index within stage) of every block, in order."""
    seen, out = {}, []
    for plan in block_plan(VARIANTS[variant]):
        out.append((plan.stage, seen.get(plan.stage, 0)))
        seen[plan.stage] = seen.get(plan.stage, 0) + 1
    return out


def _bn(prefix_src, prefix_dst, state, out):
    for p in BN:
        out[f"{prefix_dst}.{p}"] = state[f"{prefix_src}.{p}"]


def _outside_blocks(state, stem_conv, stem_bn, head_conv, head_bn, classifier):
    """Stem, head and classifier under a library's module names (without .weight, .bias...)."""
    out = {f"{stem_conv}.weight": state["stem.conv.weight"], f"{head_conv}.weight": state["head.conv.weight"],
           f"{classifier}.weight": state["classifier.weight"], f"{classifier}.bias": state["classifier.bias"]}
    _bn("stem.bn", stem_bn, state, out)
    _bn("head.bn", head_bn, state, out)
    return out


def to_timm(state, variant="b0"):
    out = _outside_blocks(state, "conv_stem", "bn1", "conv_head", "bn2", "classifier")
    for i, (s, j) in enumerate(_stages(variant)):
        b, t = f"blocks.{i}", f"blocks.{s}.{j}"
        if f"{b}.dw.conv.weight" not in state:  # V2's Fused-MBConv: ConvBnAct (`cn`) or EdgeResidual (`er`)
            if f"{b}.expand.conv.weight" in state:
                out[f"{t}.conv_exp.weight"] = state[f"{b}.expand.conv.weight"]
                _bn(f"{b}.expand.bn", f"{t}.bn1", state, out)
                out[f"{t}.conv_pwl.weight"] = state[f"{b}.project.conv.weight"]
                _bn(f"{b}.project.bn", f"{t}.bn2", state, out)
            else:
                out[f"{t}.conv.weight"] = state[f"{b}.project.conv.weight"]
                _bn(f"{b}.project.bn", f"{t}.bn1", state, out)
        elif f"{b}.expand.conv.weight" in state:  # InvertedResidual
            out[f"{t}.conv_pw.weight"] = state[f"{b}.expand.conv.weight"]
            _bn(f"{b}.expand.bn", f"{t}.bn1", state, out)
            out[f"{t}.conv_dw.weight"] = state[f"{b}.dw.conv.weight"]
            _bn(f"{b}.dw.bn", f"{t}.bn2", state, out)
            out[f"{t}.conv_pwl.weight"] = state[f"{b}.project.conv.weight"]
            _bn(f"{b}.project.bn", f"{t}.bn3", state, out)
        else:  # DepthwiseSeparable
            out[f"{t}.conv_dw.weight"] = state[f"{b}.dw.conv.weight"]
            _bn(f"{b}.dw.bn", f"{t}.bn1", state, out)
            out[f"{t}.conv_pw.weight"] = state[f"{b}.project.conv.weight"]
            _bn(f"{b}.project.bn", f"{t}.bn2", state, out)
        for src, dst in (("reduce", "conv_reduce"), ("expand", "conv_expand")):
            for p in ("weight", "bias"):
                if f"{b}.se.{src}.{p}" in state:
                    out[f"{t}.se.{dst}.{p}"] = state[f"{b}.se.{src}.{p}"]
    return out


def to_torchvision(state, variant="b0"):
    head = len(VARIANTS[variant].stages) + 1  # features: stem, one Sequential per stage, head
    out = _outside_blocks(state, "features.0.0", "features.0.1", f"features.{head}.0", f"features.{head}.1",
                          "classifier.1")
    for i, (s, j) in enumerate(_stages(variant)):
        b, t = f"blocks.{i}", f"features.{s + 1}.{j}.block"
        units = (["expand"] if f"{b}.expand.conv.weight" in state else []) + ["dw", "se", "project"]
        if f"{b}.dw.conv.weight" not in state:  # V2's FusedMBConv: [kxk expand,] project, no SE
            units = [u for u in units if u not in ("dw", "se")]
        for k, unit in enumerate(units):
            if unit == "se":
                for src, dst in (("reduce", "fc1"), ("expand", "fc2")):
                    for p in ("weight", "bias"):
                        out[f"{t}.{k}.{dst}.{p}"] = state[f"{b}.se.{src}.{p}"]
            else:
                out[f"{t}.{k}.0.weight"] = state[f"{b}.{unit}.conv.weight"]
                _bn(f"{b}.{unit}.bn", f"{t}.{k}.1", state, out)
    return out
