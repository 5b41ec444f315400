"""Variants: surgery is exact where it claims to be, distillation learns and its weights reload."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from edgeeff.data.preprocess import PreprocessSpec
from edgeeff.models.builder import SqueezeExcite, build_model, count_parameters
from edgeeff.models.distill import RecoverySettings, distill, kd_loss, save_recovered
from edgeeff.models.surgery import fold_gate, gate_statistics, make_variant, remove_se, swap_activation
from edgeeff.models.weights import load_model

from .conftest import B0_TEST_WEIGHTS, SAMPLE, needs_b0_weights, needs_shared

RES = 64  # small crops: every test here runs in seconds


def _spec():
    return PreprocessSpec(resolution=RES, crop_pct=0.875, interpolation="bicubic",
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _crops(n=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, RES, RES, 3), dtype=np.uint8)


def _model(variant="b0", se=True, seed=0):
    torch.manual_seed(seed)
    model = build_model(variant, se=se)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong fold would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _input(crops):
    return torch.from_numpy(_spec().to_model_input(crops))


@pytest.mark.parametrize("act, cls", [("hswish", nn.Hardswish), ("relu6", nn.ReLU6), ("swish", nn.SiLU)])
def test_swap_activation_reaches_every_activation(act, cls):
    model = _model()
    swap_activation(model, act)
    acts = [m.act for m in model.modules() if hasattr(m, "act") and not isinstance(m.act, nn.Identity)]
    assert acts and all(isinstance(a, cls) for a in acts)
    se_acts = [m.act for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert len(se_acts) == len(model.blocks) and all(isinstance(a, cls) for a in se_acts)
    assert all(isinstance(m.gate, nn.Sigmoid) for m in model.modules() if isinstance(m, SqueezeExcite))
    assert model.act_name == act and model.describe()["act"] == act
    # Nothing else moved: the same weights as a fresh build with that activation accepts.
    build_model("b0", act=act, se=True).load_state_dict(model.state_dict())


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_remove_se_gives_the_builders_architecture(variant):
    model = _model(variant)
    make_variant(model, act="hswish", se="remove", crops=_crops(4), spec=_spec())
    assert not any(isinstance(m, SqueezeExcite) for m in model.modules())
    assert all(b.se is None for b in model.blocks)
    assert model.describe()["se"] == "remove" and model.se_enabled is False
    target = build_model(variant, act="hswish", se=False)
    assert count_parameters(model) == count_parameters(target)
    assert list(model.state_dict()) == list(target.state_dict())
    target.load_state_dict(model.state_dict())  # same names and shapes
    x = _input(_crops(2, seed=3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), target(x))


def test_folding_a_constant_gate_is_exact():
    model = _model()
    x = _input(_crops(3, seed=5))
    # Make every SE gate constant: zero reduce weights -> the gate is sigmoid(expand.bias), whatever the input.
    with torch.no_grad():
        for block in model.blocks:
            block.se.reduce.weight.zero_()
            block.se.expand.weight.zero_()
            block.se.expand.bias.uniform_(-2, 2)
        before = model(x)
    record = remove_se(model, _crops(4), _spec())
    assert {r["action"] for r in record} == {"folded-exact"}
    assert max(r["gate_std_max"] for r in record) < 1e-6
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_fold_gate_matches_gating_on_one_block():
    model = _model()
    block = model.blocks[3]
    x = torch.randn(2, block.dw.conv.out_channels, 8, 8)
    gate = torch.rand(x.shape[1])
    with torch.no_grad():
        expected = block.project(x * gate.view(1, -1, 1, 1))
        fold_gate(block, gate)
        torch.testing.assert_close(block.project(x), expected, atol=1e-5, rtol=1e-5)
    assert block.se is None


def _varying_gates_model():
    model = _model()
    with torch.no_grad():  # strong SE weights: gates that really depend on the image
        for block in model.blocks:
            block.se.reduce.weight.normal_(0, 3.0)
            block.se.expand.weight.normal_(0, 3.0)
    return model


def test_varying_gates_are_folded_by_mean_or_removed():
    crops = _crops(6)
    stats = gate_statistics(_varying_gates_model(), crops, _spec())
    assert len(stats) == 16 and stats[0][1].max() > 1e-3
    folded = _varying_gates_model()
    rec = remove_se(folded, crops, _spec())
    for r in rec:  # each block's decision follows from its measured variation
        assert r["action"] == ("folded-exact" if r["gate_std_max"] <= 1e-3 else "folded-mean")
    assert rec[0]["action"] == "folded-mean"
    removed = _varying_gates_model()
    rec = remove_se(removed, crops, _spec(), tolerance=-1.0, fold_mean=False)
    assert {r["action"] for r in rec} == {"removed"}
    w_fold = folded.blocks[0].project.conv.weight
    w_removed = removed.blocks[0].project.conv.weight
    mean0 = stats[0][0]
    torch.testing.assert_close(w_fold, w_removed * mean0.view(1, -1, 1, 1))


def test_surgery_is_a_no_op_when_nothing_changes():
    model = build_model("lite0")
    state = copy.deepcopy(model.state_dict())
    record = make_variant(model, act="relu6", se="keep")
    assert record.summary()["se"] == "none" and not record.se_blocks  # Lite has none to keep
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_kd_loss_is_zero_for_identical_logits():
    logits = torch.randn(4, 10)
    assert float(kd_loss(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(torch.zeros(4, 10), logits, 2.0)) > 0


def _tiny_distill(steps=12, seed=0, lr=1e-3, train="all"):
    teacher = _model(seed=1)
    student = copy.deepcopy(teacher)
    make_variant(student, act="hswish", se="remove", crops=_crops(8), spec=_spec())
    settings = RecoverySettings(steps=steps, minutes=None, lr=lr, batch=4, seed=seed, train=train)
    result = distill(student, teacher, _crops(8, seed=2), _spec(), settings, quiet=True)
    return student, teacher, result


@pytest.mark.parametrize("train", ["all", "bn"])
def test_distillation_lowers_the_loss_and_is_deterministic(tmp_path, train):
    torch.set_num_threads(1)
    student, teacher, result = _tiny_distill(steps=30, train=train)
    assert result.steps_done == 30 and not result.stopped_by_time
    if train == "all":  # (this random model's logits are near-uniform: bn's loss starts at ~1e-6)
        first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
        assert last < first * 0.8, result.losses
    again, _, result2 = _tiny_distill(steps=30, train=train)
    assert result2.losses == result.losses
    start = copy.deepcopy(teacher)
    make_variant(start, act="hswish", se="remove", crops=_crops(8), spec=_spec())
    for (k, a), b, c in zip(student.state_dict().items(), again.state_dict().values(), start.state_dict().values()):
        assert torch.equal(a, b), k
        if train == "bn" and k.endswith(".weight") and a.ndim > 1:  # convolution and classifier weights
            assert torch.equal(a, c), k  # stayed as they were
    moved = [k for (k, a), c in zip(student.state_dict().items(), start.state_dict().values()) if not torch.equal(a, c)]
    assert any(k.endswith((".bn.weight", ".bn.bias")) for k in moved), moved  # the BatchNorms trained


def test_recovered_weights_reload_to_identical_outputs(tmp_path):
    student, _, _ = _tiny_distill(steps=3)
    path = tmp_path / "recovered.pth"
    save_recovered(student, path)
    x = _input(_crops(2, seed=9))
    # The activation is recorded beside the tensors; SE is inferred from the keys.
    for kwargs in ({}, {"act": "hswish"}, {"act": "hswish", "se": False}):
        reloaded, info = load_model("b0", weights=path, **kwargs)
        assert info.format == "edgeeff"
        assert reloaded.describe()["act"] == "hswish" and reloaded.describe()["se"] == "remove"
        with torch.no_grad():
            assert torch.equal(reloaded(x), student(x))


def test_a_time_budget_plans_the_steps():
    teacher = _model(seed=1)
    student = copy.deepcopy(teacher)
    settings = RecoverySettings(steps=None, minutes=0.05, lr=1e-4, batch=2)
    result = distill(student, teacher, _crops(4), _spec(), settings, quiet=True)
    assert result.planned_from_time and result.steps_done >= 5
    assert result.steps_done <= result.steps_planned


def test_plain_state_dict_without_se_loads_with_se_inferred(tmp_path):
    model = _model(se=False)
    path = tmp_path / "nose.pth"
    torch.save(model.state_dict(), path)
    reloaded, _ = load_model("b0", weights=path, conventions="tf")  # a plain state dict records none
    assert reloaded.se_enabled is False and reloaded.act_name == "swish"


def test_cli_options_are_checked(tmp_path, capsys):
    from edgeeff.cli import main

    assert main(["compile", "--variant", "b0", "--target", "onnx", "--random-weights", "--recover", "distill",
                 "--calib", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert main(["compile", "--variant", "b0", "--target", "onnx", "--random-weights", "--recover", "distill",
                 "--out", str(tmp_path / "o")]) == 2
    weights = ["compile", "--variant", "b0", "--target", "onnx", "--weights", str(tmp_path / "missing.pth"),
               "--calib", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*weights, "--recover-params", "all"]) == 2  # without --recover distill
    capsys.readouterr()
    # Each value is checked once, by RecoverySettings; the message names the flag.
    for flags, message in ((["--recover-lr", "0"], "--recover-lr 0: must be more than 0"),
                           (["--recover-temperature", "-1"], "--recover-temperature -1: must be more than 0"),
                           (["--recover-steps", "0"], "--recover-steps 0: must be at least 1"),
                           (["--recover-batch", "0"], "--recover-batch 0: must be at least 1"),
                           (["--recover-minutes", "0"], "--recover-minutes 0: must be more than 0")):
        assert main([*weights, "--recover", "distill", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main([*weights, "--recover", "distill", "--recover-quant-aware", "1.5"]) == 2
    assert "--recover-quant-aware 1.5: a fraction of the steps" in capsys.readouterr().err
    assert main([*weights, "--recover-quant-aware", "0.5"]) == 2
    assert "only apply with --recover distill" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_output_names_distinguish_variants(tmp_path):
    from edgeeff.pipeline import CompileOptions, output_name

    base = dict(variant="b0", target="onnx", out=tmp_path)
    assert output_name(CompileOptions(**base), "onnx") == "b0-onnx"
    assert output_name(CompileOptions(**base, act="hswish", se="remove"), "onnx") == "b0-hswish-nose-onnx"
    assert output_name(CompileOptions(**base, act="hswish", se="remove", recover="distill"), "onnx") == \
        "b0-hswish-nose-kd-onnx"
    assert output_name(CompileOptions(**base, act="swish", se="keep"), "onnx") == "b0-onnx"
    # weights that carry their own architecture (a recovered.pth) name the folder when no flag does
    recovered = {"act": "hswish", "se": "remove"}
    assert output_name(CompileOptions(**base), "rpi", recovered) == "b0-hswish-nose-rpi"
    assert output_name(CompileOptions(**base), "rpi", {"act": "swish", "se": "keep"}) == "b0-rpi"
    assert output_name(CompileOptions(variant="lite0", target="onnx", out=tmp_path, act="hswish"), "onnx") == \
        "lite0-hswish-onnx"


@pytest.mark.slow
@needs_shared
@needs_b0_weights
def test_compile_with_surgery_and_recovery_end_to_end(tmp_path):
    """The one command on real weights with a tiny budget: chain in report.json/md, recovered.pth reloads."""
    from edgeeff.cli import main

    calib = tmp_path / "calib"
    calib.mkdir()
    images = sorted((SAMPLE / "calib").rglob("*.JPEG"))[:12]
    for p in images:
        (calib / p.name).symlink_to(p)
    val_images = sorted((SAMPLE / "val").rglob("*.JPEG"))[::65][:10]
    listfile = tmp_path / "list.txt"
    listfile.write_text("".join(f"{p} {p.parent.name}\n" for p in val_images))
    code = main(["compile", "--variant", "b0", "--weights", str(B0_TEST_WEIGHTS), "--target", "onnx",
                 "--calib", str(calib), "--calib-count", "8", "--val", str(listfile), "--act", "hswish",
                 "--se", "remove", "--recover", "distill", "--recover-steps", "2", "--recover-batch", "2",
                 "--out", str(tmp_path / "out"), "--latency-runs", "2", "--quiet", "--threads", "2"])
    assert code == 0
    folder = tmp_path / "out" / "b0-hswish-nose-kd-onnx"
    report = json.loads((folder / "report.json").read_text())
    assert [s["stage"] for s in report["variant_chain"]] == ["original", "variant", "recovered"]
    assert report["variant_chain"][0]["act"] == "swish" and report["variant_chain"][0]["se"] == "keep"
    assert report["variant_chain"][2]["act"] == "hswish" and report["variant_chain"][2]["se"] == "remove"
    assert report["model"]["act"] == "hswish" and report["model"]["se"] == "remove"
    assert report["recovery"]["steps_done"] == 2
    # the measured defaults: every parameter at 3e-5, mixup on the crops
    assert report["recovery"]["settings"]["train"] == "all" and report["recovery"]["settings"]["lr"] == 3e-5
    assert report["recovery"]["settings"]["augment"] == "rrc-flip-mixup"
    fp32 = next(a for a in report["artifacts"] if a["precision"] == "fp32")
    assert fp32["max_abs_diff_vs_reference"] < 1e-2  # the export matches the variant it exported
    # Beside the drop from the original, each artifact's cost against the FP32 variant it was made from.
    assert fp32["top1_vs_variant"] == {"drop": 0.0, "agreement": 100.0}
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert int8["top1_vs_variant"]["drop"] == pytest.approx(report["variant_chain"][-1]["top1"] - int8["top1"], abs=0.02)
    assert "Variant chain" in (folder / "report.md").read_text()
    assert "Variant chain" in (folder / "report.html").read_text()
    reloaded, _ = load_model("b0", weights=folder / "recovered.pth", act="hswish", se=False)
    assert reloaded.describe()["act"] == "hswish" and not reloaded.se_enabled
    # Compiled again without flags, the recovered weights name their own folder (not b0-onnx).
    assert main(["compile", "--variant", "b0", "--weights", str(folder / "recovered.pth"), "--target", "onnx",
                 "--calib", str(calib), "--calib-count", "4", "--out", str(tmp_path / "out"),
                 "--latency-runs", "1", "--quiet", "--threads", "2"]) == 0
    again = json.loads((tmp_path / "out" / "b0-hswish-nose-onnx" / "report.json").read_text())
    assert again["model"]["act"] == "hswish" and again["model"]["se"] == "remove"
    assert not (tmp_path / "out" / "b0-onnx").exists()


class _ConvHswish(nn.Module):
    """conv -> hard-swish -> conv: the smallest graph with a hard-swish input to quantize."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.act, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.act(self.c1(x))).mean((2, 3))


def test_tflite_hard_swish_input_range_is_floored_at_minus_3(tmp_path, monkeypatch):
    """The INT8 .tflite spends no grid on values below -3 before a HARD_SWISH (it maps them all to 0)."""
    pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed")
    pytest.importorskip("litert_torch", reason="the tflite extra is not installed")
    from ai_edge_litert import schema_py_generated as schema

    from edgeeff.backends import litert

    float_path = litert.convert_float(_ConvHswish().eval(), 16, tmp_path / "f.tflite")
    assert len(litert.hard_swish_inputs(float_path)) == 1
    calib = np.random.default_rng(0).normal(0, 8, (6, 16, 16, 3)).astype(np.float32)  # conv out reaches << -3

    def hswish_input_low(path):
        model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
        graph = model.subgraphs[0]
        op = next(o for o in graph.operators if litert._builtin(model.operatorCodes[o.opcodeIndex])
                  == schema.BuiltinOperator.HARD_SWISH)
        q = graph.tensors[op.inputs[0]].quantization
        return (-128 - q.zeroPoint[0]) * q.scale[0]

    recipe = {"method": "minmax", "name": "minmax"}
    litert.quantize_int8(float_path, tmp_path / "floored.tflite", calib, recipe, quiet=True)
    monkeypatch.setattr(litert, "floor_hard_swish_inputs", lambda ranges, _names: ranges)
    litert.quantize_int8(float_path, tmp_path / "raw.tflite", calib, recipe, quiet=True)
    assert hswish_input_low(tmp_path / "raw.tflite") < -10
    assert -3.1 < hswish_input_low(tmp_path / "floored.tflite") <= -2.9


def _bn_output_stats(model, x):
    stats, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(
                lambda _m, _i, o, name=name: stats.__setitem__(name, (o.mean((0, 2, 3)), o.std((0, 2, 3))))))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return stats


def test_alignment_gives_every_batchnorm_the_teachers_statistics():
    from edgeeff.models.distill import align_statistics

    teacher = _model(seed=1)
    student = copy.deepcopy(teacher)
    make_variant(student, act="hswish", se="remove", crops=_crops(8), spec=_spec())
    x = _input(_crops(8, seed=4))
    want = _bn_output_stats(teacher, x)
    before = _bn_output_stats(student, x)
    assert max(float((before[k][0] - want[k][0]).abs().max()) for k in want) > 1e-2  # surgery moved them
    assert align_statistics(student, teacher, x) == len(want)
    after = _bn_output_stats(student, x)  # a fresh pass with the new parameters
    for k in want:
        torch.testing.assert_close(after[k][0], want[k][0], atol=2e-4, rtol=1e-3)
        torch.testing.assert_close(after[k][1], want[k][1], atol=2e-4, rtol=1e-3)
    conv_weights = [k for k in student.state_dict() if k.endswith("conv.weight")]
    reference = copy.deepcopy(teacher)
    make_variant(reference, act="hswish", se="remove", crops=_crops(8), spec=_spec())
    for k in conv_weights:  # only BatchNorm affine parameters change
        assert torch.equal(student.state_dict()[k], reference.state_dict()[k]), k


def test_training_only_batchnorm_and_biases_leaves_the_rest():
    teacher = _model(seed=1)
    student = copy.deepcopy(teacher)
    make_variant(student, act="hswish", se="remove", crops=_crops(8), spec=_spec())
    start = copy.deepcopy(student.state_dict())
    settings = RecoverySettings(steps=4, minutes=None, lr=1e-3, batch=4, train="bn", align=False)
    distill(student, teacher, _crops(8, seed=2), _spec(), settings, quiet=True)
    moved = {k for k, v in student.state_dict().items() if not torch.equal(v, start[k])}
    assert moved and all(".bn." in k or k.endswith("bias") for k in moved), sorted(moved)[:5]
    assert any(".bn.weight" in k for k in moved)
    assert all(p.requires_grad for p in student.parameters())  # handed back trainable


def test_feature_distillation_pulls_block_outputs_towards_the_teacher():
    from edgeeff.models.distill import _block_outputs, feature_loss

    teacher = _model(seed=1)
    crops = _crops(8, seed=2)
    x = _input(crops)

    def block_error(student):
        s, t = [], []
        hooks = _block_outputs(student, s) + _block_outputs(teacher, t)
        with torch.no_grad():
            student(x)
            teacher(x)
        for h in hooks:
            h.remove()
        return float(feature_loss(s, t))

    start = copy.deepcopy(teacher)
    make_variant(start, act="hswish", se="remove", crops=_crops(8), spec=_spec())
    errors = {}
    for weight in (0.0, 1.0):
        student = copy.deepcopy(start)
        settings = RecoverySettings(steps=8, minutes=None, lr=1e-4, batch=4, feature_weight=weight, train="all",
                                    align=False, augment="none")
        distill(student, teacher, crops, _spec(), settings, quiet=True)
        errors[weight] = block_error(student)
    # Logits alone barely move the blocks of this random model; the feature term does.
    assert errors[1.0] < 0.85 * block_error(start) and errors[1.0] < 0.85 * errors[0.0], errors


def test_mixup_blends_each_image_with_its_neighbour():
    from edgeeff.models.distill import augment_batch

    # Flat images stay flat through crop, resize and flip, so each output is one number.
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 16, 16).contiguous()
    plain = augment_batch(x, "rrc-flip", torch.Generator().manual_seed(0))
    mixed = augment_batch(x, "rrc-flip-mixup", torch.Generator().manual_seed(0))
    again = augment_batch(x, "rrc-flip-mixup", torch.Generator().manual_seed(0))
    assert torch.equal(mixed, again)  # seeded: the same batch every time
    assert torch.allclose(plain, x)
    values = mixed.amax((1, 2, 3))
    assert torch.allclose(values, mixed.amin((1, 2, 3)))
    for i, v in enumerate(values.tolist()):
        low, high = sorted((i, (i - 1) % 6))  # between the image and the one before it
        assert low <= v <= high and v not in (low, high), (i, v)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_batch(x, "cutmix", torch.Generator())


def test_tflite_percentile_clips_a_rare_activation_outlier_but_not_the_logits(tmp_path):
    """rpi's recipe for hard-swish models: edgeeff's histogram percentile on the .tflite's tensors."""
    pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed")
    pytest.importorskip("litert_torch", reason="the tflite extra is not installed")
    from ai_edge_litert import schema_py_generated as schema

    from edgeeff.backends import litert

    float_path = litert.convert_float(_ConvHswish().eval(), 16, tmp_path / "f.tflite")
    calib = np.random.default_rng(0).normal(0, 1, (12, 16, 16, 3)).astype(np.float32)
    calib[3, 5, 5, :] = 60.0  # one pixel of one image: a rare outlier in every activation after it

    def ranges(path):
        model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
        graph = model.subgraphs[0]
        op = next(o for o in graph.operators if litert._builtin(model.operatorCodes[o.opcodeIndex])
                  == schema.BuiltinOperator.HARD_SWISH)

        def high(i):
            q = graph.tensors[i].quantization
            return (127 - q.zeroPoint[0]) * q.scale[0]
        return high(op.outputs[0]), high(graph.outputs[0])

    litert.quantize_int8(float_path, tmp_path / "mm.tflite", calib, {"method": "minmax", "name": "minmax"}, quiet=True)
    details = litert.quantize_int8(float_path, tmp_path / "p.tflite", calib,
                                   {"method": "percentile", "name": "percentile", "percentile": 99.9}, quiet=True)
    act_mm, logits_mm = ranges(tmp_path / "mm.tflite")
    act_p, logits_p = ranges(tmp_path / "p.tflite")
    assert act_p < 0.5 * act_mm  # the outlier no longer sets the hard-swish output's range
    assert logits_p == pytest.approx(logits_mm, rel=1e-3)  # graph output: full range
    assert details["calibration"] == "percentile" and details["percentile"] == 99.9


def test_rpi_picks_the_histogram_percentile_for_hard_swish_models_only():
    from edgeeff.profiles import get_recipe, get_target, recipe_for_model

    rpi = get_target("rpi")
    default = get_recipe(rpi.calibration)
    hswish, swish = _model(), _model()
    swap_activation(hswish, "hswish")
    assert recipe_for_model(rpi, default, hswish)["name"] == "percentile"
    assert recipe_for_model(rpi, default, swish)["name"] == "sample_median"  # swish has its own (docs/quantization.md)
    chosen = get_recipe("minmax")  # the user's --calib-method stands
    assert recipe_for_model(rpi, chosen, hswish)["name"] == "minmax"


@pytest.mark.parametrize("steps,minutes,expected", [(620, None, (620, None)), (None, None, (None, 15.0)),
                                                     (620, 60.0, (620, 60.0)), (None, 5.0, (None, 5.0))])
def test_explicit_steps_are_never_cut_by_a_default_budget(tmp_path, steps, minutes, expected):
    """--recover-steps 620 alone was cut at 408 by the 15-minute default nobody asked for: steps
    given and minutes not => no time budget; neither => the default 15 minutes."""
    from edgeeff.cli import build_parser, compile_options
    from edgeeff.pipeline import recovery_settings

    argv = ["compile", "--variant", "b0", "--target", "onnx", "--recover", "distill", "--calib", str(tmp_path)]
    argv += (["--recover-steps", str(steps)] if steps else []) + (["--recover-minutes", str(minutes)] if minutes else [])
    args = build_parser().parse_args(argv)
    settings = recovery_settings(compile_options(args, "onnx"))
    assert (settings.steps, settings.minutes) == expected


def test_lite_reports_no_se_rather_than_removed_se():
    """Lite never had squeeze-excitation: "remove" in its report claimed a surgery that never ran."""
    lite = build_model("lite0")
    assert lite.describe()["se"] == "none"
    assert build_model("b0", se=False).describe()["se"] == "remove"
    assert build_model("b0").describe()["se"] == "keep"
    record = make_variant(lite, act="hswish", se="remove", crops=_crops(2), spec=_spec())
    assert record.summary()["from"]["se"] == "none" and record.summary()["se"] == "none"
