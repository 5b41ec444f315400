"""Layers, keeping layers in float, the sensitivity ranking, the --max-drop fallback loop and the
activation-aware ranges: on tiny graphs built in code (fast), and on Lite0 with real images."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeeff.backends.onnxruntime import OrtRunner, QdqFloatVariants
from edgeeff.cli import main
from edgeeff.data.preprocess import PreprocessSpec
from edgeeff.quant.calibration import elementwise_readers, function_mse_range, mse_range, quant_error
from edgeeff.quant.layers import find_layers, keep_float, sqnr_db
from edgeeff.quant.qdq import QDQRuleError, build_qdq, check_tensorrt_rules, plan_placement, prepare_for_tensorrt
from edgeeff.quant.sensitivity import fallback, rank_layers
from edgeeff.scoring import score

from .conftest import needs_shared
from .graphs import tiny_efficientnet

SPEC = PreprocessSpec(resolution=16, crop_pct=1.0, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                      std=(0.5, 0.5, 0.5), layout="NCHW", input_dtype="float32")


def _crops(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def _run(model, x):
    return OrtRunner(model.SerializeToString(), 1, SPEC).predict(x)


@pytest.fixture(scope="module")
def tiny():
    fp32 = prepare_for_tensorrt(tiny_efficientnet(), 13)
    ranges = {name: (-3.0, 3.0) for name in plan_placement(fp32, "inside_swish").tensors}
    return fp32, build_qdq(fp32, plan_placement(fp32, "nvidia"), ranges)


def test_layers_are_weighted_nodes_with_their_activation(tiny):
    fp32, _ = tiny
    layers = {layer.name: layer for layer in find_layers(fp32)}
    assert list(layers) == ["stem", "dw", "se_reduce", "se_expand", "project", "fc"]
    assert layers["stem"].nodes == ("stem", "stem_act_sig", "stem_act")  # swish = Sigmoid + Mul
    assert layers["se_expand"].nodes == ("se_expand", "se_gate")  # the SE gate's sigmoid
    assert layers["project"].nodes == ("project",)  # linear bottleneck: no activation
    assert layers["dw"].kind == "depthwise" and layers["fc"].kind == "fc" and layers["project"].kind == "pointwise"


def test_keep_float_all_layers_gives_back_fp32_and_none_changes_nothing(tiny):
    fp32, qdq = tiny
    x = SPEC.to_model_input(_crops(8))
    names = [layer.name for layer in find_layers(fp32)]
    reference = _run(fp32, x)
    assert keep_float(qdq, fp32, []) is qdq
    all_float = keep_float(qdq, fp32, names, needed_by="consumers")
    assert not any(n.op_type == "QuantizeLinear" for n in all_float.graph.node)
    np.testing.assert_allclose(_run(all_float, x), reference, atol=1e-4)
    # Quantization error shrinks as layers go float (and is real to begin with).
    int8_err = sqnr_db(reference, _run(qdq, x))
    half = sqnr_db(reference, _run(keep_float(qdq, fp32, names[:3], needed_by="consumers"), x))
    assert int8_err < half < 80


def test_tensorrt_rules_accept_declared_float_layers_only(tiny):
    fp32, qdq = tiny
    model = keep_float(qdq, fp32, ["dw"], needed_by="consumers")
    check_tensorrt_rules(model, float_layers=("dw",))
    with pytest.raises(QDQRuleError, match="dw: data input"):
        check_tensorrt_rules(model)  # undeclared: a weighted layer without Q/DQ is an error
    with pytest.raises(QDQRuleError, match="kept in float, but"):
        check_tensorrt_rules(qdq, float_layers=("dw",))  # declared float but still quantized


def test_ort_float_variant_restores_the_relu6_the_quantizer_folded(tmp_path):
    """ONNX Runtime folds a ReLU6 Clip into the Q range after its conv and drops the node: a
    float layer must get it back, or its output is unbounded."""
    from edgeeff.backends.onnxruntime import prepared_fp32, quantize

    fp32_path, int8_path = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(tiny_efficientnet(act="relu6"), str(fp32_path))
    quantize(fp32_path, int8_path, SPEC.to_model_input(_crops(20)), {"name": "minmax", "method": "minmax"},
             {"activations": "uint8", "weights": "int8", "per_channel": True}, quiet=True)
    assert not any(n.op_type == "Clip" for n in onnx.load(str(int8_path)).graph.node)  # folded
    variants = QdqFloatVariants(int8_path, prepared_fp32(fp32_path), SPEC, 1, "onnxruntime")
    names = [layer.name for layer in variants.layers]
    x = SPEC.to_model_input(_crops(8, seed=2))
    np.testing.assert_allclose(variants.runner(names).predict(x), _run(variants.fp32, x), atol=1e-4)
    assert sum(n.op_type == "Clip" for n in variants.model(["stem"]).graph.node) == 1


def test_ort_float_variant_keeps_quantized_neighbours_quantized(tmp_path):
    """ONNX Runtime's INT8 kernels take and give quantized tensors: a float layer's output stays
    quantized where a quantized layer reads it, and its input where a quantized layer made it."""
    from edgeeff.backends.onnxruntime import quantize

    fp32_path, int8_path = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(tiny_efficientnet(), str(fp32_path))
    quantize(fp32_path, int8_path, SPEC.to_model_input(_crops(20)), {"name": "minmax", "method": "minmax"},
             {"activations": "uint8", "weights": "int8", "per_channel": True}, quiet=True)
    from edgeeff.backends.onnxruntime import prepared_fp32

    variants = QdqFloatVariants(int8_path, prepared_fp32(fp32_path), SPEC, 1, "onnxruntime")
    names = [layer.name for layer in variants.layers]
    assert "dw" in names
    model = variants.model(["dw"])
    dw = next(n for n in model.graph.node if n.name == "dw")
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers[dw.input[0]].op_type == "DequantizeLinear"  # made by the quantized stem's Q
    assert dw.input[1] in {i.name for i in model.graph.initializer}  # float weights, no DQ
    x = SPEC.to_model_input(_crops(8, seed=1))
    reference = _run(variants.fp32, x)
    everything_float = variants.runner(names).predict(x)
    assert sqnr_db(reference, everything_float) > 50
    assert sqnr_db(reference, variants.runner([]).predict(x)) < sqnr_db(reference, everything_float)


def test_ranking_is_sorted_worst_first_and_covers_every_layer(tiny):
    fp32, qdq = tiny

    class Variants:  # the TensorRT flavour, in memory
        backend, artifact, spec = "tensorrt", "tiny", SPEC
        layers = find_layers(fp32)

        def runner(self, float_layers):
            return OrtRunner(keep_float(qdq, fp32, float_layers, "consumers").SerializeToString(), 1, SPEC)

    result = rank_layers(Variants(), Variants.layers, _crops(8))
    values = [s.sqnr_db for s in result.layers]
    assert values == sorted(values) and len(values) == 6
    assert result.all_quantized_sqnr_db < values[-1]  # everything quantized: worse than the mildest layer alone
    assert json.dumps(result.as_dict())  # JSON-ready


class _FakeVariants:
    """Logits whose agreement with the reference grows with the number of float layers."""

    backend, artifact = "fake", "fake"
    spec = PreprocessSpec(resolution=2, crop_pct=1.0, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1),
                          layout="NHWC", input_dtype="uint8")

    def __init__(self, n):
        self.n = n
        self.ranked = 0

    def runner(self, float_layers):
        wrong = max(0, 10 - 3 * len(float_layers))  # images whose class flips

        class R:
            max_batch = 100
            spec = _FakeVariants.spec

            def predict(_, x):
                logits = np.zeros((len(x), 5))
                idx = x[:, 0, 0, 0].astype(int)  # the image's index, written into its first pixel
                logits[np.arange(len(x)), (idx % 5 + (idx < wrong)) % 5] = 1
                return logits
        return R()


def _fallback(max_drop, limit):
    v = _FakeVariants(100)
    crops = np.zeros((100, 2, 2, 3), np.uint8)
    crops[:, 0, 0, 0] = np.arange(100)
    labels = np.arange(100) % 5
    ref = score(np.eye(5)[labels], labels)
    calls = []

    def rank():
        calls.append(1)
        return [f"l{i}" for i in range(20)]
    steps, met, metric = fallback(v, rank, crops, labels, ref, max_drop, limit, quiet=True)
    return steps, met, metric, calls


def test_fallback_stops_as_soon_as_the_budget_is_met():
    steps, met, metric, calls = _fallback(max_drop=4.0, limit=8)
    assert metric == "disagreement" and met
    assert [len(s.kept_float) for s in steps] == [0, 1, 2]  # 10% -> 7% -> 4% disagreement
    assert steps[-1].kept_float == ["l0", "l1"] and calls == [1]


def test_fallback_within_budget_never_ranks_and_over_it_stops_at_the_limit():
    steps, met, _, calls = _fallback(max_drop=10.0, limit=8)
    assert met and len(steps) == 1 and calls == []
    steps, met, _, _ = _fallback(max_drop=0.0, limit=2)
    assert not met and [len(s.kept_float) for s in steps] == [0, 1, 2]


def test_activation_aware_range_clips_the_tail_swish_does_not_see():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 200000), rng.uniform(-40, -10, 300)])  # a far negative tail
    lo, hi = values.min(), values.max()
    hist, _ = np.histogram(values, bins=2048, range=(lo, hi))
    plain = mse_range(hist, lo, hi)
    aware = function_mse_range(hist, lo, hi, "swish")
    assert aware[0] > plain[0]  # clips more of the negative tail: swish(x) ~ 0 there
    centres = np.linspace(lo, hi, 2049)[:-1] + (hi - lo) / 4096
    swish = centres / (1 + np.exp(-centres))

    def swish_error(low, high):
        scale = (high - low) / 255
        zero = np.round(-low / scale)
        q = (np.clip(np.round(centres / scale + zero), 0, 255) - zero) * scale
        return float((hist * (q / (1 + np.exp(-q)) - swish) ** 2).sum())
    assert swish_error(*aware) < swish_error(*plain)
    assert quant_error(centres, hist, *plain, 0, 255, False) <= quant_error(centres, hist, *aware, 0, 255, False)


def test_elementwise_readers_find_swish_sigmoid_and_hardswish():
    readers = elementwise_readers(tiny_efficientnet())
    assert readers["stem"] == "swish" and readers["se_expand"] == "sigmoid"
    assert "project" not in readers and "block_out" not in readers


# ---------------------------------------------------------------------------------------------
# Real images: Lite0 for the onnx target with --sensitivity


@needs_shared
def test_lite0_fallback_keeps_layers_float_in_the_shipped_file(sample, tmp_path):
    """--max-drop below what all-INT8 Lite0 reaches: the fallback moves layers to float, each step
    measured in ONNX Runtime, and the file written is the step the report shows."""
    code = main(["compile", "--variant", "lite0", "--target", "onnx", "--calib", str(sample / "calib"),
                 "--calib-count", "100", "--val", str(sample / "val"), "--out", str(tmp_path), "--quiet",
                 "--latency-runs", "5", "--max-drop", "0.1", "--max-float-layers", "2"])
    assert code == 4  # 0.1 point of disagreement is out of reach with 2 float layers: the gate fails
    folder = tmp_path / "lite0-onnx"
    report = json.loads((folder / "report.json").read_text())
    fb, int8 = report["fallback"], report["artifacts"][1]
    assert fb["metric"] == "disagreement" and not fb["met"] and fb["limit"] == 2
    assert [s["kept_float"] for s in fb["steps"]] == [0, 1, 2]
    assert int8["kept_float"] == fb["kept_float"] and len(int8["kept_float"]) <= 2
    shipped = next(s for s in fb["steps"] if s["kept_float"] == len(int8["kept_float"]))
    assert int8["top1_agreement"] == shipped["top1_agreement"]  # the file is the step that was measured
    model = onnx.load(str(folder / "model_int8.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    for name in int8["kept_float"]:
        node = next(n for n in model.graph.node if n.name == name)
        assert node.input[1] in {i.name for i in model.graph.initializer}  # float weights, no DequantizeLinear
        assert producers.get(node.input[1]) is None
    assert "fallback" in (folder / "report.md").read_text()
