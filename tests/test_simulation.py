"""INT8 simulated in PyTorch (quant/simulation.py) and quantization-aware recovery (distill's last steps)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgeeff.models.distill import RecoverySettings, distill, quant_aware_start
from edgeeff.models.surgery import make_variant
from edgeeff.profiles import get_recipe
from edgeeff.quant.simulation import WEIGHT_QMAX, activation_ranges, quant_points, simulated_int8

from .test_variants import _crops, _input, _model, _spec


def _ranges(model, seed=3):
    return activation_ranges(model, [_input(_crops(4, seed=seed))], get_recipe("percentile"))


def test_quantization_points_follow_what_the_runtimes_store():
    hswish = _model(se=False)
    make_variant(hswish, act="hswish", se="keep", crops=_crops(4), spec=_spec())
    points = quant_points(hswish)
    # Hard-swish is its own op: the conv's output and the activation's are both stored.
    assert {"stem.bn", "stem.act", "blocks.1.expand.bn", "blocks.1.expand.act"} <= set(points)
    assert points["stem.bn"][2] == "hardswish"  # read only by hard-swish: activation-aware range
    assert "blocks.0.project.out" in points and "blocks.1.project.bn" not in points
    residual = [i for i, b in enumerate(hswish.blocks) if b.has_residual]
    assert residual and all(f"blocks.{i}.sum" in points for i in residual)
    relu6 = _model(variant="lite0", se=False)
    relu6_points = quant_points(relu6)
    # ReLU6 is fused into its conv: one stored tensor per conv.
    assert "stem.out" in relu6_points and "stem.bn" not in relu6_points and "stem.act" not in relu6_points
    se = quant_points(_model())
    assert {"blocks.0.se.pooled", "blocks.0.se.expand", "blocks.0.se.gate", "blocks.0.se.out"} <= set(se)
    assert se["blocks.0.se.expand"][2] == "sigmoid"


def test_simulation_rounds_weights_per_channel_and_leaves_the_model_clean():
    model = _model(se=False)
    x = _input(_crops(2, seed=5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        float_out = model(x)
    ranges = _ranges(model)
    with simulated_int8(model, ranges), torch.no_grad():
        w = model.blocks[1].expand.conv.weight
        scale = w.abs().flatten(1).amax(1).view(-1, 1, 1, 1) / WEIGHT_QMAX
        steps = w / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3)  # on the per-channel INT8 grid
        assert steps.abs().max() <= WEIGHT_QMAX + 1e-3
        sim_out = model(x)
    assert not torch.allclose(sim_out, float_out)
    assert torch.allclose(sim_out, float_out, atol=0.2 * float(float_out.abs().max()))  # close, not equal
    assert model.state_dict().keys() == before.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        assert torch.equal(model(x), float_out)


def test_simulated_activations_take_at_most_256_values():
    model = _model(se=False)
    ranges = _ranges(model)
    seen = []
    with simulated_int8(model, ranges), torch.no_grad():
        hook = model.blocks[1].expand.act.register_forward_hook(lambda _m, _i, out: seen.append(out))
        model(_input(_crops(2, seed=6)))
        hook.remove()
    # The fake-quant hook was registered first, so this one sees the rounded tensor.
    assert 2 < torch.unique(seen[0]).numel() <= 256


def test_gradients_reach_the_models_own_weights_through_the_rounding():
    model = _model(se=False)
    ranges = _ranges(model)
    weight = model.blocks[1].expand.conv.weight
    with simulated_int8(model, ranges):
        model(_input(_crops(2, seed=7))).logsumexp(1).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert model.blocks[1].expand.conv.weight is weight


def test_quant_aware_steps_are_the_last_fraction_of_the_plan():
    assert quant_aware_start(100, 0.0) is None
    assert quant_aware_start(100, 0.5) == 50
    assert quant_aware_start(100, 1.0) == 0
    assert quant_aware_start(None, 1.0) == 0 and quant_aware_start(None, 0.3) is None
    with pytest.raises(ValueError, match="quant_aware"):
        RecoverySettings(quant_aware=1.5)


@pytest.mark.parametrize("fraction, first", [(0.5, 3), (1.0, 0), (0.0, None)])
def test_quant_aware_recovery_trains_the_model_under_simulation(fraction, first):
    torch.set_num_threads(1)
    teacher = _model(seed=1)
    student = copy.deepcopy(teacher)
    make_variant(student, act="hswish", se="remove", crops=_crops(8), spec=_spec())
    start = copy.deepcopy(student)
    settings = RecoverySettings(steps=6, minutes=None, lr=1e-3, batch=4, quant_aware=fraction, range_images=4)
    result = distill(student, teacher, _crops(8, seed=2), _spec(), settings, quiet=True)
    assert result.quant_aware_from_step == first
    assert student.state_dict().keys() == start.state_dict().keys()  # no parametrization left behind
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), start.state_dict().values()))
    again = copy.deepcopy(start)
    distill(again, teacher, _crops(8, seed=2), _spec(), settings, quiet=True)
    for (k, a), b in zip(student.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k  # deterministic, simulated steps included
    assert np.isfinite(result.losses).all()


def test_a_time_budget_plans_the_simulated_steps_after_the_warm_up():
    torch.set_num_threads(1)
    teacher = _model(seed=1)
    student = copy.deepcopy(teacher)
    settings = RecoverySettings(steps=None, minutes=0.08, lr=1e-4, batch=2, quant_aware=0.5, range_images=2)
    result = distill(student, teacher, _crops(4), _spec(), settings, quiet=True)
    assert result.planned_from_time
    if result.steps_planned > 10:  # a slow machine may plan no simulated step at all
        assert result.quant_aware_from_step == result.steps_planned - round(0.5 * result.steps_planned)
    assert "quant_aware_from_step" in result.to_dict()
