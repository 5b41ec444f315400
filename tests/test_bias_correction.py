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
