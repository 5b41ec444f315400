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
