import pytest

from edgeeff.models.builder import build_model, count_macs, count_parameters
from edgeeff.models.family import VARIANTS, block_plan, round_channels, round_repeats

# Published parameter counts (EfficientNet paper, TF model zoo, timm): what the builder must reproduce.
PUBLISHED_PARAMS = {"b0": 5.29e6, "b7": 66.3e6, "lite0": 4.65e6, "lite4": 13.0e6}


@pytest.mark.parametrize("variant,published", PUBLISHED_PARAMS.items())
def test_parameter_counts_match_published(variant, published):
    params = count_parameters(build_model(variant))
    assert abs(params - published) / published < 0.01, params


def test_exact_counts_of_reference_implementations():
    # The exact totals of the TF reference implementation's checkpoints.
    assert count_parameters(build_model("b0")) == 5_288_548
    assert count_parameters(build_model("lite0")) == 4_652_008


def test_scaling_rules():
    assert round_channels(32, 1.1) == 32      # 35.2 -> 32 (nearest multiple of 8, within 10%)
    assert round_channels(16, 1.4) == 24      # 22.4 -> 24
    assert round_channels(320, 2.0) == 640
    assert round_channels(24, 1.1) == 24      # 26.4 rounds down to 24: within 10%, kept
    assert round_repeats(3, 1.1) == 4         # depth rounds up
    assert round_repeats(1, 3.1) == 4


def test_lite_keeps_stem_head_and_outer_stages():
    lite4 = build_model("lite4")
    b4 = build_model("b4")
    assert lite4.stem.conv.out_channels == 32 and b4.stem.conv.out_channels == 48
    assert lite4.head.conv.out_channels == 1280 and b4.head.conv.out_channels == 1792
    stages = [p.stage for p in block_plan(VARIANTS["lite4"])]
    assert stages.count(0) == 1 and stages.count(6) == 1  # first/last stage not deepened
    assert [p.stage for p in block_plan(VARIANTS["b4"])].count(0) == 2


def test_activation_and_se_are_knobs_of_one_builder():
    model = build_model("b0", act="hswish", se=False)
    names = {type(m).__name__ for m in model.modules()}
    assert "Hardswish" in names and "SiLU" not in names and "SqueezeExcite" not in names
    assert type(build_model("lite0")).__name__ == type(build_model("b3")).__name__


def test_macs_of_b0_match_paper():
    assert abs(count_macs(build_model("b0")) - 0.39e9) / 0.39e9 < 0.02


def test_resolution_and_dropout_follow_coefficients():
    assert [VARIANTS[f"b{i}"].resolution for i in range(8)] == [224, 240, 260, 300, 380, 456, 528, 600]
    assert VARIANTS["b7"].dropout == 0.5 and build_model("b7").dropout.p == 0.5


# EfficientNetV2. torchvision's exact totals: torchvision/models/efficientnet.py,
# EfficientNet_V2_{S,M,L}_Weights.meta["num_params"] (its model includes the 1000-class classifier,
# as ours does). Its "_ops" (GMACs at the weights' 384/480 crop): 8.4, 24.6, 56.1.
TORCHVISION_V2 = {"v2-s": (21_458_488, 8.4), "v2-m": (54_139_356, 24.6), "v2-l": (118_515_272, 56.1)}
# timm publishes V2-B0..B3 only to 10k parameters: results/results-imagenet.csv (param_count, millions)
# of huggingface/pytorch-image-models, rows tf_efficientnetv2_b{0..3}.in1k: 7.14, 8.14, 10.10, 14.36.
# The exact totals are those timm's _gen_efficientnetv2_base arch_def gives (stem 32, head
# round_chs_fn(1280) with round_limit=0, SE on the block input): what our builder must reproduce.
TIMM_V2 = {"v2-b0": (7.14, 7_139_704), "v2-b1": (8.14, 8_141_052), "v2-b2": (10.10, 10_096_086),
           "v2-b3": (14.36, 14_358_406)}


@pytest.mark.parametrize("variant,published", TORCHVISION_V2.items())
def test_v2_parameter_counts_equal_torchvision(variant, published):
    params, gmacs = published
    model = build_model(variant)
    assert count_parameters(model) == params
    assert round(count_macs(model) / 1e9, 1) == gmacs


# timm's own V2s (timm/models/efficientnet.py `_gen_efficientnetv2_s`, rw_t = V2-S scaled (0.8, 0.9);
# rw_s/rw_m with rw=True). results-imagenet.csv's param_count: 13.65, 23.94, 53.24 (millions); the
# exact totals were counted on timm 1.0.31's own models (timm.create_model, pretrained=False), built
# here with torchvision stubbed out (it does not import beside the CPU torch): that run also loaded
# timm's random-init state dicts into the builder through edgeeff's loader and got the same logits
# (max abs difference 0.0), which test_weights checks on state dicts these tests build.
TIMM_V2_RW = {"v2-rw-t": (13.65, 13_649_388), "v2-rw-s": (23.94, 23_941_296), "v2-rw-m": (53.24, 53_236_442)}


@pytest.mark.parametrize("variant,published", [*TIMM_V2.items(), *TIMM_V2_RW.items()])
def test_v2_parameter_counts_equal_timm(variant, published):
    millions, exact = published
    params = count_parameters(build_model(variant))
    assert round(params / 1e6, 2) == millions
    assert params == exact


def test_v2_rw_tables():
    """rw_s/rw_m: an EdgeResidual first stage (3x3 then 1x1 at expand ratio 1, where V2-S has one 3x3
    conv), 272 channels last, head 1792 (x1.2 for rw_m: 2152); rw_m's depth per stage (1.2 x4, 1.6 x2);
    rw_t: V2-S's table at (0.8, 0.9) with timm's 10% rounding rule (stem 24, not 16)."""
    rw_s = build_model("v2-rw-s")
    first = rw_s.blocks[0]
    assert first.expand.conv.kernel_size == (3, 3) and first.project.conv.kernel_size == (1, 1)
    assert first.has_residual and rw_s.head.conv.out_channels == 1792
    assert rw_s.blocks[-1].project.conv.out_channels == 272
    assert [p.stage for p in block_plan(VARIANTS["v2-rw-m"])].count(5) == 24  # ceil(15 * 1.6)
    assert build_model("v2-rw-m").head.conv.out_channels == 2152
    rw_t = build_model("v2-rw-t")
    assert rw_t.stem.conv.out_channels == 24 and rw_t.blocks[0].expand is None
    assert rw_t.head.conv.out_channels == 1024
    assert [(v.train_resolution, v.resolution) for v in (VARIANTS[f"v2-rw-{n}"] for n in "tsm")] == \
        [(224, 288), (288, 384), (320, 416)]


def test_v2_stage_tables_follow_effnetv2_configs():
    s = block_plan(VARIANTS["v2-s"])
    assert len(s) == 2 + 4 + 4 + 6 + 9 + 15
    assert [p.kind for p in s[:10]] == ["fused"] * 10 and {p.kind for p in s[10:]} == {"mbconv"}
    assert {p.kernel for v in ("v2-b0", "v2-s", "v2-m", "v2-l") for p in block_plan(VARIANTS[v])} == {3}
    # B1-B3 scale the Base table: depth rounds up per stage (1 -> 2 at 1.1), width 1.2: 16 -> 16, 192 -> 232
    assert [p.stage for p in block_plan(VARIANTS["v2-b1"])].count(0) == 2
    b3 = block_plan(VARIANTS["v2-b3"])
    assert b3[0].out_channels == 16 and b3[-1].out_channels == 232 and len(b3) == 2 + 3 + 3 + 5 + 7 + 12
    assert [(v.train_resolution, v.resolution) for v in (VARIANTS[n] for n in ("v2-b0", "v2-s", "v2-m", "v2-l"))] \
        == [(192, 224), (300, 384), (384, 480), (384, 480)]


def test_v2_se_only_in_mbconv_blocks_and_fused_blocks_have_no_depthwise():
    model = build_model("v2-s")
    for block, plan in zip(model.blocks, block_plan(VARIANTS["v2-s"])):
        assert (block.se is not None) == (plan.kind == "mbconv")
        assert (block.dw is None) == (plan.kind == "fused")
    first = model.blocks[0]  # Fused, expand ratio 1: one 3x3 conv with the activation, residual 24 -> 24
    assert first.expand is None and first.project.conv.kernel_size == (3, 3)
    assert type(first.project.act).__name__ == "SiLU" and first.has_residual
    assert model.stem.conv.out_channels == 24 and model.head.conv.out_channels == 1280
    assert build_model("v2-b2").head.conv.out_channels == 1408  # round(1280 * 1.1), no 10% rule
    assert not any(b.se for b in build_model("v2-s", se=False).blocks)


@pytest.mark.parametrize("alias,name", [("tf_efficientnetv2_b0", "v2-b0"), ("efficientnetv2_s", "v2-s"),
                                        ("efficientnet_v2_l", "v2-l"), ("efficientnetv2-m", "v2-m"),
                                        ("v2-b3", "v2-b3"), ("b3", "b3"), ("efficientnetv2_rw_s", "v2-rw-s")])
def test_v2_aliases(alias, name):
    from edgeeff.models.family import resolve_variant

    assert resolve_variant(alias) == name
    assert build_model(alias).variant.name == name
