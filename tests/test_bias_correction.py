"""Fast bias correction on QDQ ONNX: the quantized layer's mean output per channel moves back
onto the FP32 layer's."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgeeff.quant.bias_correction import correct_biases


def _depthwise(channels: int = 6) -> onnx.ModelProto:
    """One 3x3 depthwise conv with bias and no padding (so borders cannot blur the channel means).
    Channel 0's weights are 20x the others', so per-tensor INT8 weights round the small channels
    coarsely: a real, systematic shift of their mean output."""
    rng = np.random.default_rng(1)
    weight = rng.normal(0.05, 0.02, (channels, 1, 3, 3)).astype(np.float32)
    weight[0] *= 20
    bias = rng.normal(0, 0.1, channels).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=channels, name="dw")
    graph = helper.make_graph(
        [node], "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", channels, 10, 10])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class _Reader(CalibrationDataReader):
    def __init__(self, inputs):
        self.batches = iter([{"x": inputs[i:i + 8]} for i in range(0, len(inputs), 8)])

    def get_next(self):
        return next(self.batches, None)


def _mean_shift(model: onnx.ModelProto, fp32: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    """Per channel: mean(quantized output) - mean(FP32 output)."""
    def run(m):
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": inputs})[0].mean(axis=(0, 2, 3))
    return run(model) - run(fp32)


def test_bias_correction_cancels_the_mean_shift_of_coarse_weights(tmp_path):
    fp32 = _depthwise()
    rng = np.random.default_rng(2)
    inputs = rng.uniform(0, 4, (64, 6, 12, 12)).astype(np.float32)  # positive: like post-activation maps
    onnx.save(fp32, tmp_path / "fp32.onnx")
    quantize_static(str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"), _Reader(inputs[:32]),
                    quant_format=QuantFormat.QDQ, per_channel=False, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    qdq = onnx.load(str(tmp_path / "int8.onnx"))
    before = np.abs(_mean_shift(qdq, fp32, inputs[32:]))

    done = correct_biases(qdq, fp32, inputs[:32], threads=1, quiet=True)

    after = np.abs(_mean_shift(qdq, fp32, inputs[32:]))  # held-out images
    assert done["layers"] == 1
    assert before[1:].max() > 0.01, f"the test graph should have a visible shift to correct: {before}"
    assert after[1:].max() < 0.2 * before[1:].max(), f"before {before}, after {after}"


def test_bias_correction_leaves_a_float_layer_alone():
    """A layer with no input Q/DQ (kept float) has nothing to correct."""
    fp32 = _depthwise()
    copy = onnx.ModelProto()
    copy.CopyFrom(fp32)
    inputs = np.random.default_rng(3).uniform(0, 4, (8, 6, 12, 12)).astype(np.float32)
    assert correct_biases(copy, fp32, inputs, threads=1, quiet=True)["layers"] == 0
    assert copy.SerializeToString() == fp32.SerializeToString()


def test_onnx_backend_takes_bias_correction_from_the_target_whatever_the_recipe(tmp_path):
    """One switch: `bias_correction` under the target's [quantization]; the range recipe
    (here minmax, which never had it) does not turn it on or off."""
    from edgeeff.backends.onnxruntime import quantize
    from edgeeff.profiles import get_recipe, get_target

    onnx.save(_depthwise(), tmp_path / "fp32.onnx")
    inputs = np.random.default_rng(4).uniform(0, 4, (16, 6, 12, 12)).astype(np.float32)
    quant = dict(get_target("onnx").raw["quantization"])
    assert quant["bias_correction"] is True
    on = quantize(tmp_path / "fp32.onnx", tmp_path / "on.onnx", inputs, get_recipe("minmax"), quant, quiet=True)
    off = quantize(tmp_path / "fp32.onnx", tmp_path / "off.onnx", inputs, get_recipe("minmax"),
                   {**quant, "bias_correction": False}, quiet=True)
    assert on["bias_correction"]["layers"] == 1
    assert "bias_correction" not in off


def test_onnx_backend_skips_bias_correction_after_the_range_optimisation(tmp_path):
    """`bias_correction_after_optimise = false` (jetson-orin's setting, here on the ONNX Runtime
    writer): when --optimize set the ranges, the file keeps the quantizer's biases and the report
    says why; without the optimisation they are corrected."""
    from edgeeff.backends.onnxruntime import quantize
    from edgeeff.profiles import get_recipe, get_target

    onnx.save(_depthwise(), tmp_path / "fp32.onnx")
    inputs = np.random.default_rng(4).uniform(0, 4, (16, 6, 12, 12)).astype(np.float32)
    quant = {**get_target("onnx").raw["quantization"], "bias_correction_after_optimise": False}
    searched = lambda graph: ({"x": (0.0, 3.0)}, {"points": 1, "matched": 1, "tensors": 1})  # noqa: E731
    optimised = quantize(tmp_path / "fp32.onnx", tmp_path / "opt.onnx", inputs, get_recipe("minmax"), quant,
                         quiet=True, range_overrides=searched)
    plain = quantize(tmp_path / "fp32.onnx", tmp_path / "plain.onnx", inputs, get_recipe("minmax"), quant, quiet=True)
    assert "bias_correction" not in optimised and "optimised" in optimised["bias_correction_skipped"]
    assert optimised["searched_ranges"]["tensors"] == 1  # the override did reach the quantizer
    assert plain["bias_correction"]["layers"] == 1 and "bias_correction_skipped" not in plain


def test_bias_correction_after_the_optimisation_is_the_targets_choice():
    from edgeeff.profiles import get_target
    from edgeeff.quant.bias_correction import wanted

    orin = get_target("jetson-orin").quantization  # measured: docs/quantization.md
    assert wanted(orin, ranges_optimised=False) and not wanted(orin, ranges_optimised=True)
    onnx_target = get_target("onnx").quantization  # measured too, and kept: mixed on val
    assert wanted(onnx_target, ranges_optimised=False) and wanted(onnx_target, ranges_optimised=True)
    assert wanted({"bias_correction": True}, ranges_optimised=True)  # the key's default: as without
    assert not wanted({"bias_correction": False}, ranges_optimised=False)
    from edgeeff.quant.bias_correction import skipped_reason

    assert skipped_reason(orin, ranges_optimised=True) and not skipped_reason(orin, ranges_optimised=False)
    assert skipped_reason(onnx_target, ranges_optimised=True) is None
    assert skipped_reason({"bias_correction": False}, ranges_optimised=True) is None  # never corrects: no reason


# ---------------------------------------------------------------- .tflite (the LiteRT targets)

def test_tflite_layers_mean_output_follows_each_layouts_weights():
    """`_mean_output` reads TFLite's weight layouts (CONV_2D (out, kh, kw, in), DEPTHWISE_CONV_2D
    (1, kh, kw, in x multiplier), FULLY_CONNECTED (out, in)): checked against torch's own layers fed
    an input that is constant per channel (no padding, so every output is the mean)."""
    import torch

    from edgeeff.backends.tflite_bias_correction import _mean_output

    rng = np.random.default_rng(5)
    means = rng.normal(size=4)
    x = torch.tensor(np.broadcast_to(means[None, :, None, None], (1, 4, 5, 5)).copy())
    conv = rng.normal(size=(6, 4, 3, 3))  # torch (out, in, kh, kw)
    expected = torch.nn.functional.conv2d(x, torch.tensor(conv)).mean((0, 2, 3)).numpy()
    np.testing.assert_allclose(_mean_output(conv.transpose(0, 2, 3, 1), means, "conv"), expected, rtol=1e-9)
    depthwise = rng.normal(size=(8, 1, 3, 3))  # multiplier 2: output c reads input c // 2
    expected = torch.nn.functional.conv2d(x, torch.tensor(depthwise), groups=4).mean((0, 2, 3)).numpy()
    np.testing.assert_allclose(_mean_output(depthwise.transpose(1, 2, 3, 0), means, "depthwise"), expected,
                               rtol=1e-9)
    dense = rng.normal(size=(3, 4))
    np.testing.assert_allclose(_mean_output(dense, means, "fully_connected"), dense @ means, rtol=1e-9)


def _tflite_pair(folder):
    """A float .tflite (3x3 conv, ReLU, 3x3 depthwise, no padding) and its INT8 file with the
    depthwise conv's input range cut to a third: the clipped top tail is a real, systematic fall of
    the depthwise output's mean, the shift bias correction is for."""
    import torch

    from edgeeff.backends import litert

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 6, 3)
            self.dw = torch.nn.Conv2d(6, 6, 3, groups=6)
            with torch.no_grad():  # positive weights: the clipped tail moves each channel's mean down
                self.dw.weight.abs_().add_(0.1)

        def forward(self, x):
            return self.dw(torch.relu(self.conv(x)))

    float_path = litert.convert_float(Net().eval(), 12, folder / "fp32.tflite")
    inputs = np.random.default_rng(6).uniform(-1, 1, (48, 12, 12, 3)).astype(np.float32)
    calibration = litert.calibrate_int8(float_path, inputs[:32], {"method": "minmax"}, quiet=True)
    graph, _ = litert.tflite_graph(float_path)
    depthwise = next(op for op in graph if op.name == "DEPTHWISE_CONV_2D")
    cut = calibration.ranges[depthwise.inputs[0]]
    calibration.ranges[depthwise.inputs[0]] = {**cut, "max": cut["max"] / 3}
    int8_path = folder / "int8.tflite"
    litert.write_int8(float_path, int8_path, calibration)
    return float_path, int8_path, inputs


def _tflite_outputs(path, inputs) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    results = []
    for x in inputs:
        scale, zero = inp["quantization"]
        it.set_tensor(inp["index"], (np.round(x / scale) + zero).astype(inp["dtype"])[None] if scale else x[None])
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float64)
        scale, zero = out["quantization"]
        results.append((y - zero) * scale if scale else y)
    return np.concatenate(results)


def test_tflite_bias_correction_cancels_the_mean_shift_of_a_clipped_input(tmp_path):
    from edgeeff.backends.tflite_bias_correction import BiasCorrection

    float_path, int8_path, inputs = _tflite_pair(tmp_path)
    # held-out images; the output is NCHW (convert_float leaves a plain module's layout as it is)
    reference = _tflite_outputs(float_path, inputs[32:]).mean((0, 2, 3))
    before = np.abs(_tflite_outputs(int8_path, inputs[32:]).mean((0, 2, 3)) - reference)

    done = BiasCorrection(inputs[:32], threads=1).apply(int8_path, float_path)

    after = np.abs(_tflite_outputs(int8_path, inputs[32:]).mean((0, 2, 3)) - reference)
    assert done["layers"] == 2 and done["images"] == 32  # the conv and the depthwise conv
    assert before.max() > 0.05, f"the test graph should have a visible shift to correct: {before}"
    assert after.max() < 0.3 * before.max(), f"before {before}, after {after}"


def test_the_stepwise_fake_quant_is_bit_identical_to_the_formula():
    """fake_quant works step by step on one array (4x faster in bias correction than the one-line
    expression's temporaries); it must give the very numbers the expression gives, in place in float64
    with a centred input's offset (the ONNX bias correction) and on a copy in the input's own dtype
    (the LiteRT one calls it so), or the corrected biases, and so the artifacts, would change."""
    from edgeeff.quant.bias_correction import fake_quant

    def formula(x, scale, zero, qmin, qmax):
        return (np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale

    rng = np.random.default_rng(7)
    value = (rng.standard_normal((3, 5, 9, 9)) * 4).astype(np.float32)
    axes = (0, 2, 3)
    for offset, scale, zero, qmin, qmax in ((0.0, 0.037, 128.0, 0, 255), (1.25, 0.05, 0.0, -128, 127)):
        plain = formula(value.astype(np.float64) + offset, scale, zero, qmin, qmax) - offset
        scratch = value.astype(np.float64) + offset
        stepwise = fake_quant(scratch, scale, zero, qmin, qmax, in_place=True) - offset
        np.testing.assert_array_equal(stepwise, plain)
        np.testing.assert_array_equal(value.mean(axis=axes, dtype=np.float64), value.astype(np.float64).mean(axis=axes))
        copied = fake_quant(value, scale, zero, qmin, qmax)
        assert copied.dtype == np.float32 and copied is not value
        np.testing.assert_array_equal(copied, formula(value, scale, zero, qmin, qmax))
