"""Scale groups (edgeeff/quant/scale_groups.py): the rewrite is exact in float, picks the wide channels,
leaves ReLU6 models alone, and survives conversion to an INT8 .tflite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgeeff.errors import UserError
from edgeeff.models.builder import build_model
from edgeeff.models.surgery import swap_activation
from edgeeff.quant import scale_groups, simulation
from edgeeff.quant.scale_groups import GroupedPath, Site, best_split, sites, split_for_int8, split_site

RES = 64


def _model(se=True, act="hswish", seed=0):
    torch.manual_seed(seed)
    model = build_model("b0", se=se)
    swap_activation(model, act)
    with torch.no_grad():  # non-trivial BN statistics and channel scales, so a wrong permutation shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
        model.stem.bn.weight[:4] *= 20  # four wide stem channels, as in the hard-swish B0 variant
    return model.eval()


def _batches(n=8, seed=0):
    return list(torch.from_numpy(np.random.default_rng(seed).normal(0, 1, (n, 3, RES, RES)).astype(np.float32)).split(4))


@pytest.mark.parametrize("se", [True, False])
def test_splitting_is_exact_in_float(se):
    model = _model(se=se)
    x = _batches()[0]
    with torch.no_grad():
        before = model(x)
        split_site(model, Site("stem", 0), [[0, 5, 9], [c for c in range(32) if c not in (0, 5, 9)]])
        split_site(model, Site("blocks.3.expand", 3), [list(range(100, 144)), list(range(100))])
        after = model(x)
    assert isinstance(model.stem, GroupedPath) and isinstance(model.blocks[0].dw, nn.Identity)
    assert isinstance(model.blocks[3].expand, GroupedPath)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_best_split_cuts_off_the_wide_channels():
    widths = np.array([6.0, 70.0, 5.0, 6.5, 60.0, 5.5, 4.0, 6.0])
    groups, gain = best_split(widths)
    assert [g.tolist() for g in groups] == [[1, 4], [0, 2, 3, 5, 6, 7]]
    assert gain > 10
    groups, gain = best_split(np.full(8, 6.0))  # nothing to gain: one group
    assert len(groups) == 1 and gain == 1.0


def test_wide_stem_is_split_and_the_original_is_untouched():
    model = _model()
    x = _batches()[0]
    with torch.no_grad():
        expected = model(x)
    split, record = split_for_int8(model, _batches())
    assert record[0]["site"] == "stem" and record[0]["channels"] == [4, 28]
    assert record[0]["noise_gain"] >= scale_groups.MIN_GAIN
    assert isinstance(split.stem, GroupedPath) and not isinstance(model.stem, GroupedPath)
    with torch.no_grad():
        torch.testing.assert_close(split(x), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert "stem" not in [site.name for site in sites(split)]  # a split site is not offered again


def test_relu6_models_have_no_sites():
    """ReLU6 stores its fused output, bounded to [0, 6] in every channel: nothing to split."""
    lite = build_model("lite0").eval()
    assert sites(lite) == []
    split, record = split_for_int8(lite, _batches(4))
    assert split is lite and record == []
    assert sites(_model(act="swish")) and sites(_model(act="hswish"))


def test_simulation_quantizes_the_concatenation_once():
    """Quantizers give a concatenation's inputs its output's scale: the simulation rounds there."""
    split, _ = split_for_int8(_model(), _batches(), min_gain=1.0, max_sites=1)
    points = simulation.quant_points(split)
    assert "stem.out" in points
    assert "stem.producers.0.bn" in points and "stem.producers.0.act" in points
    assert "stem.depthwises.0.bn" in points and "stem.depthwises.0.act" not in points
    ranges = simulation.activation_ranges(split, _batches(4), {"method": "minmax"})
    x = _batches()[0]
    with torch.no_grad():
        reference = split(x)
        with simulation.simulated_int8(split, ranges):
            simulated = split(x)
    assert not torch.equal(simulated, reference)
    assert (simulated.argmax(1) == reference.argmax(1)).float().mean() >= 0.5


def test_rpi_compile_splits_and_the_tflite_matches(tmp_path, monkeypatch):
    """A compile for rpi (scale_groups = "auto") converts and quantizes the split graph, and
    report.json names the split sites; --scale-groups off turns it off."""
    pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed")
    pytest.importorskip("litert_torch", reason="the tflite extra is not installed")
    from PIL import Image

    from edgeeff.cli import main

    monkeypatch.setattr(scale_groups, "MIN_GAIN", 1.0)  # random weights: split whatever can be
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    args = ["compile", "--variant", "b0", "--random-weights", "--act", "hswish", "--target", "rpi",
            "--calib", str(calib), "--out", str(tmp_path / "out"), "--latency-runs", "1", "--quiet",
            "--threads", "2"]
    assert main(args) == 0
    assert (tmp_path / "out" / "b0-hswish-rpi" / "model_int8.tflite").is_file()
    report = json.loads((tmp_path / "out" / "b0-hswish-rpi" / "report.json").read_text())
    assert report["scale_groups"]["setting"] == "auto"
    assert report["scale_groups"]["sites"][0]["site"] == "stem"
    assert main([*args, "--scale-groups", "off", "--force"]) == 0
    report = json.loads((tmp_path / "out" / "b0-hswish-rpi" / "report.json").read_text())
    assert report["scale_groups"] == {"setting": "off", "sites": []}


def test_scale_groups_setting_is_checked_for_options_built_in_python(tmp_path):
    """The command line refuses a bad --scale-groups itself (tests/test_cli.py); CompileOptions
    built in Python get the same one-line error from the pipeline's own check."""
    from edgeeff.pipeline import CompileOptions, check_inputs

    opts = CompileOptions(variant="lite0", target="rpi", random_weights=True, scale_groups="always",
                          out=tmp_path / "o")
    with pytest.raises(UserError, match="--scale-groups always: choose auto or off"):
        check_inputs(opts)
    assert not (tmp_path / "o").exists()


def test_min_stride_keeps_the_splits_to_coarse_sites():
    """`scale_groups_min_stride` (the onnx target: 32): a split costs ONNX Runtime in proportion to
    the tensor it splits, so only sites whose tensor is at least that coarse are split."""
    model = _model(act="swish")
    strides = scale_groups.site_strides(model, _batches()[0][:1])
    assert strides["stem"] == 2 and strides["blocks.1.expand"] == 2  # before block 1's stride-2 depthwise
    assert strides["blocks.15.expand"] == 32
    everywhere, _ = split_for_int8(model, _batches(), min_gain=1.0)
    coarse, record = split_for_int8(model, _batches(), min_gain=1.0, min_stride=16)
    assert record and all(strides[r["site"]] >= 16 for r in record)
    assert isinstance(everywhere.stem, GroupedPath) and not isinstance(coarse.stem, GroupedPath)


def test_onnx_splits_swish_models_at_coarse_sites_only():
    """Measured on the B0 test model (docs/quantization.md): swish models get scale groups on onnx
    at stride 32 and coarser; hard-swish variants and ReLU6 models do not."""
    from edgeeff.profiles import get_target, quantization_for_model

    onnx_target = get_target("onnx")
    swish = quantization_for_model(onnx_target, build_model("b0"))
    assert swish["scale_groups"] == "auto" and swish["scale_groups_min_stride"] == 32
    assert quantization_for_model(onnx_target, _model(act="hswish"))["scale_groups"] == "off"
    assert quantization_for_model(onnx_target, build_model("lite0"))["scale_groups"] == "off"


def test_targets_of_one_command_measure_the_channel_widths_once(monkeypatch):
    """`--target onnx,rpi` on a swish model: two splits (onnx keeps to stride 32, rpi splits every
    site that pays), one forward pass over the calibration images for the channel widths."""
    from pathlib import Path

    from edgeeff import pipeline
    from edgeeff.data.images import ImageSet
    from edgeeff.data.preprocess import PreprocessSpec
    from edgeeff.profiles import get_target

    calls = []
    real = scale_groups.channel_widths
    monkeypatch.setattr(scale_groups, "channel_widths", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = _model(act="swish")
    spec = PreprocessSpec(resolution=RES, crop_pct=0.875, interpolation="bicubic", mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225))
    crops = np.random.default_rng(1).integers(0, 256, (8, RES, RES, 3), dtype=np.uint8)
    calibration = ImageSet(paths=[Path(f"{i}.jpg") for i in range(8)], crops=crops)

    class Options:
        scale_groups = None

    shared = {}
    results = {name: pipeline.split_scales(Options(), get_target(name), model, spec, calibration,
                                           pipeline.Stopwatch(), shared) for name in ("onnx", "rpi")}
    assert len(calls) == 1
    onnx_info, rpi_info = results["onnx"][1], results["rpi"][1]
    assert onnx_info["min_stride"] == 32 and "min_stride" not in rpi_info
    assert {s["site"] for s in onnx_info["sites"]} <= {s["site"] for s in rpi_info["sites"]}
    assert "stem" in {s["site"] for s in rpi_info["sites"]} and "stem" not in {s["site"] for s in onnx_info["sites"]}
