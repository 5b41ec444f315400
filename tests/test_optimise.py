"""The INT8 model optimised against the FP32 model (quant/optimise.py): the mechanism, not a score.

Learned rounding never loses to nearest and mostly beats it, its weights lie on the per-channel
INT8 grid with each channel's scale unchanged, the result is deterministic, ONNX Runtime's
quantizer, fed the baked float weights, holds exactly the learned integers; the range search
lowers most units' error; every PyTorch point finds its ONNX and TFLite tensor; the search's own
fake quantizer gives torch's values bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeeff.profiles import get_recipe
from edgeeff.quant.optimise import OptimiseSettings, fake_quantize_without_grad, optimise_int8_model
from edgeeff.quant.simulation import WEIGHT_QMAX, activation_ranges

from .test_variants import RES, _crops, _input, _model


def _optimised(seed=0, steps=40):
    model = _model(se=True)
    images = _input(_crops(12, seed=7))
    ranges = activation_ranges(model, [images], get_recipe("percentile"))
    settings = OptimiseSettings(steps=steps, batch=6, seed=seed, search_ranges=False)  # rounding alone
    optimised, info = optimise_int8_model(model, images, ranges, settings,
                                        quiet=True)
    return model, optimised, info


def _integers(weight: torch.Tensor) -> torch.Tensor:
    scale = weight.abs().flatten(1).amax(1).reshape(-1, *([1] * (weight.dim() - 1))) / WEIGHT_QMAX
    return weight / scale


@pytest.fixture(scope="module")
def optimised():
    return _optimised()


def test_learned_rounding_never_loses_to_nearest_and_mostly_beats_it(optimised):
    _model_, _opt, info = optimised
    names = [u["unit"] for u in info["units"]]
    assert names[0] == "stem" and names[-1] == "head" and len(names) == 2 + len(_model_.blocks)
    for unit in info["units"]:
        assert unit["error_learned"] <= unit["error_nearest"], unit  # never worse: nearest is kept then
        assert (unit["kept"] == "learned") == (unit["error_learned"] < unit["error_nearest"]), unit
    # On this random model (activation error dominates) learning wins in 12 of 18 units; on the B0
    # test model in all 18 (docs/quantization.md). Fewer than half would mean the learning is broken.
    assert sum(u["kept"] == "learned" for u in info["units"]) > len(info["units"]) / 2


def test_learned_weights_are_on_the_int8_grid_with_the_scales_unchanged(optimised):
    model, opt, _info = optimised
    original = {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    changed = 0
    for name, module in opt.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        w, w0 = module.weight.detach(), original[name].detach()
        steps = _integers(w)
        assert torch.allclose(steps, steps.round(), atol=1e-4), name
        # the largest |w| of each channel is where it was: every backend computes the same scale
        assert torch.allclose(w.abs().flatten(1).amax(1), w0.abs().flatten(1).amax(1), rtol=1e-6), name
        nearest = _integers(w0).round()
        assert (steps.round() - nearest).abs().max() <= 1, name  # one step at most, up or down
        changed += int((steps.round() != nearest).sum())
    assert changed > 0  # learning rounded some weights away from nearest


def test_same_seed_same_weights(optimised):
    _m, first, _ = optimised
    _m2, second, _ = _optimised()
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k


def test_onnx_runtime_artifact_holds_the_learned_integers(optimised, tmp_path):
    """The baked float weights, quantized by ONNX Runtime's own quantizer (the onnx backend): its
    INT8 weight initializers equal the learned integers (the bar: at least 99.9% of them)."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from edgeeff.backends.onnxruntime import quantize
    from edgeeff.models.export import export_onnx
    from edgeeff.profiles import get_target

    model, opt, _info = optimised
    fp32, baked, int8 = tmp_path / "fp32.onnx", tmp_path / "baked.onnx", tmp_path / "int8.onnx"
    export_onnx(model, RES, fp32)
    export_onnx(opt, RES, baked)
    calib = _input(_crops(8, seed=2)).numpy()
    quantize(fp32, int8, calib, get_recipe("minmax"), {**get_target("onnx").quantization, "bias_correction": False},
             quiet=True, weights_path=baked)
    graph = onnx.load(str(int8)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    stored = []
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            dq = producer[node.input[1]]
            assert dq.op_type == "DequantizeLinear"
            stored.append(init[dq.input[0]].astype(np.int64))
    learned = [_integers(m.weight.detach()).round().numpy().astype(np.int64)
               for m in opt.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [s.shape for s in stored] == [q.shape for q in learned]
    equal = sum(int((s == q).sum()) for s, q in zip(stored, learned))
    total = sum(q.size for q in learned)
    assert equal / total >= 0.999, f"{equal}/{total}"


def _tflite_int8_weights(path) -> list[np.ndarray]:
    """The INT8 weights of every conv, depthwise conv and fully-connected op, in graph order, in
    PyTorch's layout: (out, in, kh, kw) from TFLite's (out, kh, kw, in), (C, 1, kh, kw) from its
    depthwise (1, kh, kw, C)."""
    from edgeeff.backends.tflite_flatbuffer import load_inlined, schema

    model = load_inlined(path)
    ops = schema().BuiltinOperator
    wanted = {ops.CONV_2D: "conv", ops.DEPTHWISE_CONV_2D: "depthwise", ops.FULLY_CONNECTED: "fc"}
    graph, found = model.subgraphs[0], []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = wanted.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if kind is None:
            continue
        tensor = graph.tensors[op.inputs[1]]
        assert tensor.type == schema().TensorType.INT8, kind
        w = np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.int8).reshape(tensor.shape)
        found.append({"conv": lambda a: a.transpose(0, 3, 1, 2), "depthwise": lambda a: a.transpose(3, 0, 1, 2),
                      "fc": lambda a: a}[kind](w).astype(np.int64))
    return found


def test_litert_artifact_holds_the_learned_integers(optimised, tmp_path):
    """The baked model converted to float .tflite and quantized by ai-edge-quantizer as the LiteRT
    targets do (litert.build with --optimize rounding): its INT8 weights equal the learned integers
    (the bar: at least 99.9% of them), read back out of the .tflite."""
    pytest.importorskip("ai_edge_quantizer")
    from edgeeff.backends.litert import Int8Build, calibrate_int8, convert_float

    model, opt, _info = optimised
    baked, int8 = tmp_path / "baked.tflite", tmp_path / "int8.tflite"
    convert_float(opt, RES, baked)
    calib = _input(_crops(8, seed=2)).numpy().transpose(0, 2, 3, 1)  # NHWC, as the LiteRT runner feeds it
    calibration = calibrate_int8(baked, calib, get_recipe("minmax"), threads=1, quiet=True)
    Int8Build(baked, calibration, "int8").write(int8)
    stored = _tflite_int8_weights(int8)
    learned = [_integers(m.weight.detach()).round().numpy().astype(np.int64)
               for m in opt.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(s.shape for s in stored) == sorted(q.shape for q in learned)
    # Graph order is the module order here except where the converter reorders independent ops:
    # pair each stored tensor with the first unused learned one of its shape.
    unused, equal = list(learned), 0
    for s in stored:
        q = next(q for q in unused if q.shape == s.shape and (q == s).mean() > 0.9)
        unused.remove(q)
        equal += int((s == q).sum())
    total = sum(q.size for q in learned)
    assert equal / total >= 0.999, f"{equal}/{total}"
    # and the file holds the learned integers, not the original weights rounded to nearest: more
    # weights were moved by learning than the file disagrees on
    nearest = [_integers(m.weight.detach()).round().numpy().astype(np.int64)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    moved = sum(int((q != n).sum()) for q, n in zip(learned, nearest))
    assert moved > total - equal, (moved, total - equal)


def test_every_quantization_point_finds_its_onnx_tensor(tmp_path):
    """quant/tensor_names.py pairs each PyTorch point with the tensors holding its values in the
    BN-folded graph ONNX Runtime quantizes: all of them, and the right kind of node."""
    pytest.importorskip("onnxruntime")
    import onnx

    from edgeeff.backends.onnxruntime import prepared_fp32
    from edgeeff.models.export import export_onnx
    from edgeeff.quant.simulation import quant_points
    from edgeeff.quant.tensor_names import onnx_tensors_for_points

    model = _model(se=True)
    export_onnx(model, RES, tmp_path / "fp32.onnx")
    graph = prepared_fp32(tmp_path / "fp32.onnx")
    matches = onnx_tensors_for_points(model, graph, _input(_crops(2, seed=4)).numpy())
    assert set(matches) == set(quant_points(model))
    producer = {o: n.op_type for n in graph.graph.node for o in n.output}
    assert matches["input"] == [graph.graph.input[0].name]
    assert {producer[t] for t in matches["stem.bn"]} == {"Conv"}  # BatchNorm folded into the conv
    assert {producer[t] for t in matches["blocks.0.se.gate"]} == {"Sigmoid"}
    assert {producer[t] for t in matches["blocks.0.se.out"]} == {"Mul"}
    assert {producer[t] for t in matches["pooled"]} <= {"ReduceMean", "Reshape", "Flatten", "Squeeze"}
    assert isinstance(graph, onnx.ModelProto)


def test_range_search_lowers_most_units_error_and_is_deterministic():
    model = _model(se=True)
    images = _input(_crops(12, seed=7))
    ranges = activation_ranges(model, [images], get_recipe("percentile"))
    runs = [optimise_int8_model(model, images, ranges, OptimiseSettings(steps=0, batch=6), quiet=True)[1]
            for _ in range(2)]
    assert runs[0]["ranges"] == runs[1]["ranges"]
    units = runs[0]["units"]
    lower = sum(u["error_nearest"] < u["error_recipe_ranges"] for u in units)
    assert lower > len(units) / 2, [(u["unit"], u["error_recipe_ranges"], u["error_nearest"]) for u in units]
    assert any(u["ranges_changed"] for u in units)
    assert set(runs[0]["ranges"]) == set(ranges) - {"logits"}  # every point searched, the float logits not


def test_every_quantization_point_finds_its_tflite_tensor(tmp_path):
    """The same match on the float .tflite the LiteRT targets quantize (NHWC, BN folded)."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    from edgeeff.backends.litert import convert_float
    from edgeeff.quant.simulation import quant_points
    from edgeeff.quant.tensor_names import tflite_tensors_for_points

    model = _model(se=True)
    convert_float(model, RES, tmp_path / "fp32.tflite")
    x = _input(_crops(1, seed=4)).numpy().transpose(0, 2, 3, 1)
    matches = tflite_tensors_for_points(model, tmp_path / "fp32.tflite", x)
    missing = set(quant_points(model)) - set(matches)
    assert not missing, sorted(missing)


def test_simulated_placements_leave_the_targets_float_tensors_float():
    """TensorRT fuses each residual block's project conv with its Add (no quantizer between);
    NNCF quantizes depthwise inputs per channel: both stay float in the search's simulation."""
    from edgeeff.quant.optimise import ActivationQuantizers, depthwise_input_points, residual_branch_points
    from edgeeff.quant.simulation import quant_points

    model = _model(se=True)
    points = quant_points(model)
    residual = residual_branch_points(points)
    assert residual and all(model.blocks[int(n.split(".")[1])].has_residual for n in residual)
    assert len(residual) == sum(b.has_residual for b in model.blocks)
    depthwise = depthwise_input_points(model, points)
    assert depthwise[0] == "stem.act" and len(depthwise) == len(model.blocks)  # B0's block 0 has no expand
    assert all(n.endswith(".expand.act") for n in depthwise[1:])
    ranges = activation_ranges(model, [_input(_crops(4, seed=7))], get_recipe("percentile"))
    generator = torch.Generator().manual_seed(0)
    acts = ActivationQuantizers(model, ranges, generator, float_residual_branches=True,
                                float_depthwise_inputs=True)
    try:
        assert not (set(residual) | set(depthwise)) & set(acts.modules)
        assert set(acts.modules) == set(ranges) - set(residual) - set(depthwise) - {"logits"}
    finally:
        acts.remove()


def test_searched_ranges_reach_openvino_fake_quantizes(tmp_path):
    """The intel target: every per-tensor activation FakeQuantize NNCF placed (mixed preset) finds
    its point through the FP32 ONNX, and takes that point's range, zero exactly on the grid;
    the per-channel ones (depthwise inputs) keep NNCF's."""
    pytest.importorskip("nncf")
    import onnx
    import openvino as ov

    from edgeeff.backends.openvino import quantize, set_searched_ranges
    from edgeeff.models.export import export_onnx
    from edgeeff.quant.simulation import _activation_qparams
    from edgeeff.quant.tensor_names import onnx_tensors_for_points, rename_ranges

    model = _model(se=True)
    export_onnx(model, RES, tmp_path / "fp32.onnx")
    x = _input(_crops(6, seed=4)).numpy()
    quantized, _ = quantize(ov.convert_model(str(tmp_path / "fp32.onnx")), x,
                            {"method": "mean_minmax", "name": "mean_minmax"}, {"preset": "mixed"}, quiet=True)
    searched = {k: (low * 0.8, high * 0.7) for k, (low, high) in
                activation_ranges(model, [torch.from_numpy(x)], get_recipe("percentile")).items()}
    ranges, _ = rename_ranges(searched, onnx_tensors_for_points(model, onnx.load(str(tmp_path / "fp32.onnx")), x[:2]))
    counts = set_searched_ranges(quantized, ranges)
    fqs = [op for op in quantized.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
           and op.input_value(0).get_node().get_type_name() != "Constant"]
    per_channel = [fq for fq in fqs if fq.input_value(1).get_node().get_data().size > 1]
    assert per_channel and counts["fake_quantize_kept"] == len(per_channel)
    assert counts["fake_quantize_rewritten"] == len(fqs) - len(per_channel) > 0
    for fq in set(fqs) - set(per_channel):
        low, high = (float(fq.input_value(i).get_node().get_data()) for i in (1, 2))
        wanted = next(ranges[n] for n in sorted(fq.input_value(0).get_names()) if n in ranges)
        scale, zero_point = _activation_qparams(*wanted)
        assert high - low == pytest.approx(255 * scale, rel=1e-5)
        assert -low / scale == pytest.approx(zero_point + 128, abs=1e-3)  # zero on the grid


def test_targets_that_simulate_alike_share_one_search(tmp_path, monkeypatch):
    """rpi and android (the same LiteRT arithmetic) in one command search the ranges once; each gets
    its own copy of the result; onnx (another simulation) searches again."""
    import edgeeff.quant.optimise as optimise
    from edgeeff.backends import litert, onnxruntime
    from edgeeff.data.images import ImageSet
    from edgeeff.pipeline import CompileOptions, Stopwatch, optimise_int8
    from edgeeff.profiles import get_target

    from .test_variants import _spec

    searches = []
    real = optimise.optimise_int8_model
    monkeypatch.setattr(optimise, "optimise_int8_model", lambda *a, **k: searches.append(1) or real(*a, **k))
    model, crops = _model(se=True), _crops(6, seed=3)
    calibration = ImageSet(paths=[tmp_path / f"{i}.png" for i in range(len(crops))], crops=crops)
    shared, infos = {}, []
    for target, backend in (("rpi", litert), ("android", litert), ("onnx", onnxruntime)):
        opts = CompileOptions(variant="b0", target=target, out=tmp_path, optimize="ranges", quiet=True)
        _, info, _ = optimise_int8(opts, get_target(target), backend, model, _spec(), calibration,
                                   get_recipe("percentile"), tmp_path, Stopwatch(), shared)
        infos.append(info)
    assert len(searches) == 2  # rpi's search served android; onnx simulates other arithmetic
    assert infos[0] == infos[1] and infos[0] is not infos[1]
    assert infos[0]["ranges"] != infos[2]["ranges"]


def test_tensorrt_simulation_centres_where_the_target_centres():
    """The centred tensors are simulated as TensorRT computes them (x - m on a symmetric grid, m
    added back) on swish models only (jetson-orin's centre_pointwise_inputs_by_activation)."""
    from edgeeff.backends import tensorrt
    from edgeeff.profiles import get_target
    from edgeeff.quant.optimise import ActivationQuantizers
    from edgeeff.quant.qdq import centred_grid

    target = get_target("jetson")
    assert tensorrt.simulation(target, _model(se=True))["asymmetric_points"] == tensorrt.CENTRED_POINTS
    assert "asymmetric_points" not in tensorrt.simulation(target, _model("lite0", se=False))
    model = _model(se=True)
    acts = ActivationQuantizers(model, {"blocks.1.se.out": (-0.5, 3.0), "blocks.1.dw.act": (-0.5, 3.0)},
                                torch.Generator(), symmetric=True, asymmetric_points=tensorrt.CENTRED_POINTS)
    acts.remove()
    scale, zero, middle = acts.qparams["blocks.1.se.out"]  # centred: x - 1.25 on a +-1.75 grid
    assert (zero, middle) == (0, 1.25) and scale == pytest.approx(1.75 / 127)
    # the grid the file's Add and Q get (qdq.build_qdq), to the bit
    assert (middle, scale) == tuple(float(v) for v in centred_grid(-0.5, 3.0))
    assert acts.qparams["blocks.1.dw.act"] == (pytest.approx(3.0 / 127), 0, 0.0)
    x = torch.tensor([-0.5, 1.25, 3.0, 9.0])
    assert torch.allclose(acts._quantize(x, scale, zero, middle), torch.tensor([-0.5, 1.25, 3.0, 3.0]), atol=1e-6)


def test_optimize_minutes_plans_from_the_model_not_the_clock():
    """--optimize-minutes: a budget the cost model says the default settings exceed cuts the search
    images first, then the steps, then the images, never below their floors; the plan depends on the
    model and the budget alone (the same inputs give the same file), and a roomy budget changes nothing."""
    from dataclasses import replace

    from edgeeff.quant import optimise
    from edgeeff.quant.optimise import estimated_seconds, plan_for_budget, unit_costs

    model = _model(se=True)
    costs = unit_costs(model, RES)
    assert costs[0].name == "stem" and costs[-1].name == "head"
    assert all(c.melements > 0 for c in costs) and sum(c.points for c in costs) > 0
    wanted = OptimiseSettings(steps=20)
    full = estimated_seconds(costs, wanted)
    same, plan = plan_for_budget(model, RES, wanted, minutes=2 * full / 60)
    assert same == wanted and plan["cut"] == [] and plan["units"] == plan["of_units"] == len(costs)
    cut, plan = plan_for_budget(model, RES, wanted, minutes=0.5 * full / 60)
    assert plan == plan_for_budget(model, RES, wanted, minutes=0.5 * full / 60)[1]  # deterministic
    assert cut.search_images < wanted.search_images and plan["cut"][0] == "search_images"
    assert estimated_seconds(costs, cut) <= 0.5 * full or cut.search_images == optimise.MIN_SEARCH_IMAGES
    smallest = replace(wanted, search_images=optimise.MIN_SEARCH_IMAGES, steps=optimise.MIN_STEPS,
                       images=optimise.MIN_IMAGES)
    two_units = estimated_seconds(costs, replace(smallest, units=2))
    few, plan = plan_for_budget(model, RES, wanted, minutes=two_units / 60)
    assert few == replace(smallest, units=2) and plan["cut"] == ["search_images", "steps", "images", "units"]
    assert plan["units"] == 2 and estimated_seconds(costs, few) <= two_units
    assert plan_for_budget(model, RES, wanted, minutes=1e-9)[1]["units"] == 0
    # the units cut is honoured: only the first two are optimised and reported
    images = _input(_crops(8))
    ranges = activation_ranges(model, [images], get_recipe("percentile"))
    _, info = optimise_int8_model(model, images, ranges, replace(few, steps=0, batch=8, images=8), quiet=True)
    assert [u["unit"] for u in info["units"]] == ["stem", "blocks.0"]


def _simulated_kl(model, images, ranges) -> float:
    """KL(FP32 || INT8) of the logits, INT8 simulated with `ranges` (nearest-rounded weights)."""
    from edgeeff.models.distill import kd_loss
    from edgeeff.quant.optimise import ActivationQuantizers
    from edgeeff.quant.simulation import simulated_int8

    with torch.no_grad():
        reference = model(images)
        with simulated_int8(model, ranges, weights=True, activations=[]):
            acts = ActivationQuantizers(model, ranges, torch.Generator())
            try:
                out = model(images)
            finally:
                acts.remove()
    return float(kd_loss(out, reference, temperature=1.0))


def test_range_refinement_lowers_the_logit_loss_and_is_deterministic():
    """optimise.refine_ranges: every range scaled by a learned factor against the FP32 logits. From
    ranges three times too wide (so that there is a loss to lower: a random model's own percentile
    ranges leave its logits within KL 3e-5 of FP32), the simulated KL to FP32 goes down on its
    images; the same seed gives the same ranges; the report says what it did."""
    model = _model(se=True)
    with torch.no_grad():  # a random model's logits are nearly flat: sharpen them so KL has a signal
        model.classifier.weight.mul_(40)
    images = _input(_crops(12, seed=7))
    wide = {name: (low * 3, high * 3) for name, (low, high) in
            activation_ranges(model, [images], get_recipe("percentile")).items()}
    settings = OptimiseSettings(steps=0, batch=6, search_ranges=False, refine_steps=40, refine_batch=6)
    runs = [optimise_int8_model(model, images, wide, settings, quiet=True)[1] for _ in range(2)]
    assert runs[0]["ranges"] == runs[1]["ranges"]
    refinement = runs[0]["refinement"]
    assert runs[0]["method"] == "range-refinement" and refinement["steps"] == 40
    assert set(refinement["factors"]) == set(runs[0]["ranges"])
    assert any(abs(f - 1) > 0.01 for f in refinement["factors"].values())  # it moved the ranges
    for name, factor in refinement["factors"].items():  # each range is the starting one times its factor
        assert runs[0]["ranges"][name][1] == pytest.approx(wide[name][1] * factor, rel=1e-4)
    before = _simulated_kl(model, images, wide)
    after = _simulated_kl(model, images, {**wide, **runs[0]["ranges"]})
    # 40 steps at the default learning rate move a factor by about 0.25 in log: lower, not yet 1/3
    assert after < 0.85 * before, (before, after)


def test_optimize_minutes_cuts_the_refinement_first_and_drops_it_below_its_floor():
    from dataclasses import replace

    from edgeeff.quant import optimise
    from edgeeff.quant.optimise import estimated_seconds, plan_for_budget, unit_costs

    model = _model(se=True)
    wanted = OptimiseSettings(steps=0, refine_steps=120)
    costs = unit_costs(model, RES, wanted)
    search_only = estimated_seconds(costs, replace(wanted, refine_steps=0))
    full = estimated_seconds(costs, wanted)
    assert full > search_only
    half, plan = plan_for_budget(model, RES, wanted, minutes=(search_only + (full - search_only) / 2) / 60)
    assert plan["cut"] == ["refine_steps"] and optimise.MIN_REFINE_STEPS <= half.refine_steps < 120
    assert half.search_images == wanted.search_images
    none, plan = plan_for_budget(model, RES, wanted, minutes=search_only * 1.001 / 60)
    assert none.refine_steps == 0 and plan["refine_steps"] == 0 and plan["cut"] == ["refine_steps"]


def test_the_cost_model_counts_the_points_the_target_simulates():
    """TensorRT's simulation leaves conv outputs and the SE convs' outputs float: its search has
    fewer ranges to try and its passes fewer elements to quantize, so the budget plan expects less
    time than for ONNX Runtime's, which quantizes every point but the float logits."""
    from edgeeff.backends.tensorrt import SIMULATION
    from edgeeff.quant.optimise import estimated_seconds, unit_costs
    from edgeeff.quant.simulation import quant_points

    model = _model(se=True)
    every = unit_costs(model, RES)
    onnxruntime = unit_costs(model, RES, OptimiseSettings())
    tensorrt = unit_costs(model, RES, OptimiseSettings(**SIMULATION))
    assert sum(c.points for c in every) == len(quant_points(model))
    assert sum(c.points for c in onnxruntime) == len(quant_points(model)) - 1  # the logits
    assert sum(c.points for c in tensorrt) < sum(c.points for c in onnxruntime)
    assert sum(c.melements for c in tensorrt) < sum(c.melements for c in onnxruntime)
    settings = OptimiseSettings(steps=0)
    assert estimated_seconds(tensorrt, settings) < estimated_seconds(onnxruntime, settings)


def test_optimize_refine_is_the_refinement_alone(tmp_path):
    """`--optimize refine`: no unit search, every range learned at once from the recipe's; its steps
    from the flag, else REFINE_ONLY_STEPS (rpi sets no refinement steps of its own)."""
    from edgeeff.backends import litert
    from edgeeff.data.images import ImageSet
    from edgeeff.pipeline import CompileOptions, Stopwatch, optimise_int8
    from edgeeff.profiles import get_target
    from edgeeff.quant.optimise import REFINE_ONLY_STEPS

    from .test_variants import _spec

    model, crops = _model(se=True), _crops(6, seed=3)
    calibration = ImageSet(paths=[tmp_path / f"{i}.png" for i in range(len(crops))], crops=crops)
    for steps, expected in ((None, REFINE_ONLY_STEPS), (40, 40)):
        opts = CompileOptions(variant="b0", target="rpi", out=tmp_path, optimize="refine",
                              optimize_refine_steps=steps, quiet=True)
        _, info, _ = optimise_int8(opts, get_target("rpi"), litert, model, _spec(), calibration,
                                   get_recipe("percentile"), tmp_path, Stopwatch())
        assert info["setting"] == "refine" and info["method"] == "range-refinement"
        assert info["range_search"] is False and not any(u["ranges_changed"] for u in info["units"])
        assert info["refinement"]["steps"] == expected


def test_optimize_refine_too_short_for_its_floor_falls_back_to_the_recipe(tmp_path, capsys):
    """A budget that leaves fewer than MIN_REFINE_STEPS steps drops the refinement; in `refine` mode
    that is the whole optimisation, so INT8 keeps the recipe's ranges and the user is told so, rather
    than a report that says `refine` over an optimisation that did nothing."""
    from edgeeff.backends import litert
    from edgeeff.data.images import ImageSet
    from edgeeff.pipeline import CompileOptions, Stopwatch, optimise_int8
    from edgeeff.profiles import get_target

    from .test_variants import _spec

    model, crops = _model(se=True), _crops(6, seed=3)
    calibration = ImageSet(paths=[tmp_path / f"{i}.png" for i in range(len(crops))], crops=crops)
    from edgeeff.quant.optimise import estimated_seconds, unit_costs

    statistics_only = OptimiseSettings(steps=0, search_ranges=False, refine_steps=0, **litert.SIMULATION)
    seconds = estimated_seconds(unit_costs(model, _spec().resolution, statistics_only), statistics_only)
    opts = CompileOptions(variant="b0", target="rpi", out=tmp_path, optimize="refine",
                          optimize_minutes=seconds * 1.01 / 60, quiet=True)
    path, info, deployed = optimise_int8(opts, get_target("rpi"), litert, model, _spec(), calibration,
                                         get_recipe("percentile"), tmp_path, Stopwatch())
    assert path is None and info is None and deployed is model
    assert "too short for 40 refinement steps" in capsys.readouterr().err


@pytest.mark.parametrize("qmin,qmax,zero", [(0, 255, 0), (0, 255, 37), (0, 255, 255), (-128, 127, 0), (-128, 127, -5)])
@pytest.mark.parametrize("scale", [1 / 256, 0.0371, 0.5, 12.0, 3e-6])
def test_the_searchs_fake_quantizer_is_torchs_bit_for_bit(scale, zero, qmin, qmax):
    """The range search quantizes with fake_quantize_without_grad (twice as fast): the searched
    ranges, and so every artifact, must be those torch's own fake quantizer gives. Exact half
    steps (where rounding modes differ) and values beyond both ends included."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 9, 11, generator=g) * scale * 100
    x.view(-1)[:200] = (torch.arange(200) - 100 + 0.5) * scale  # half steps
    x.view(-1)[200:210] = torch.tensor([1e9, -1e9, 0.0, -0.0, scale * (qmax + 3), scale * (qmin - 3),
                                        scale / 2, -scale / 2, 2.5 * scale, -2.5 * scale])
    expected = torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)
    assert torch.equal(fake_quantize_without_grad(x, scale, zero, qmin, qmax), expected)
