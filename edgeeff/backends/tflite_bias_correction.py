"""Bias correction for full-integer .tflite files (the LiteRT targets): the ONNX backends' fast bias
correction (quant/bias_correction.py, NNCF's "fast" variant; OpenVINO's NNCF does its own) on the
INT8 file ai-edge-quantizer wrote.

Per INT8 layer (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED with int8 input and weights, int32
bias) and output channel: E[W x] - E[W_q q(x)], with x the layer's FP32 input on calibration
images (read from the float file run in the LiteRT interpreter with every tensor kept), q() the
INT8 file's own quantization of that tensor and W_q its int8 weights times their scales. The shift
is added to the int32 bias on its own grid (input scale x weight scale). Each layer is corrected for
its own rounding only, on FP32 inputs, as in the ONNX backends (correcting from the INT8 model's own
outputs over-corrects: docs/sensitivity.md).

The tensors are matched by name: ai-edge-quantizer keeps the float file's tensor names (the graph
input gains a `_quantized` suffix). Layers at a16w8 (int16 input, int64 bias) are left alone.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..progress import progress
from ..quant.bias_correction import expected_output, fake_quant
from ..util import interpreter_keeping_every_tensor
from .tflite_flatbuffer import builtin_code, load_inlined, save, schema

MAX_IMAGES = 128  # as the ONNX backends: a mean per channel settles long before that
INT8_MIN, INT8_MAX = -128, 127
INPUT_SUFFIX = "_quantized"  # ai-edge-quantizer's name for the graph input of an int8-input file


@dataclass
class BiasCorrection:
    """The calibration images and, once measured, each corrected layer input's mean per channel
    in FP32 and through its INT8 quantization, keyed by (tensor, scale, zero point): the INT8 file
    measures them, the a16w8 variants of --max-drop reuse them for every INT8 layer whose input is
    quantized as in the INT8 file (the others keep the quantizer's bias)."""

    inputs: np.ndarray  # float NHWC, as the float file takes them
    threads: int = 2
    quiet: bool = True
    # The FP32 file the correction aims at, when the INT8 file was quantized from another float file
    # (--optimize rounding's baked weights, same graph and tensor names): as on the ONNX backends,
    # the target is the original model, not the baked one. None: the file the INT8 file came from.
    reference: Path | None = None
    means: dict = field(default_factory=dict)
    measured: bool = False

    def apply(self, int8_path: Path, float_path: Path) -> dict:
        """Shift the biases of `int8_path` (quantized from `float_path`) in place; returns the
        report's `bias_correction`."""
        s = schema()
        ops = {s.BuiltinOperator.CONV_2D: "conv", s.BuiltinOperator.DEPTHWISE_CONV_2D: "depthwise",
               s.BuiltinOperator.FULLY_CONNECTED: "fully_connected"}
        float_path = self.reference or float_path
        model, ref = load_inlined(int8_path), load_inlined(float_path)
        graph, ref_graph = model.subgraphs[0], ref.subgraphs[0]
        counts = collections.Counter(t.name for t in ref_graph.tensors)
        ref_tensors = {t.name.decode(): t for t in ref_graph.tensors if counts[t.name] == 1}
        plans = []
        for op in graph.operators:
            kind = ops.get(builtin_code(model.operatorCodes[op.opcodeIndex]))
            if kind is None or len(op.inputs) < 3 or op.inputs[2] < 0:
                continue
            x, w, b = (graph.tensors[i] for i in op.inputs[:3])
            if (x.type, w.type, b.type) != (s.TensorType.INT8, s.TensorType.INT8, s.TensorType.INT32):
                continue
            x_name, w_name = x.name.decode().removesuffix(INPUT_SUFFIX), w.name.decode()
            if x_name not in ref_tensors or w_name not in ref_tensors:
                continue
            key = (x_name, float(x.quantization.scale[0]), int(x.quantization.zeroPoint[0]))
            plans.append((kind, key, w, b, ref_tensors[w_name]))
        if not self.measured:
            self._measure(float_path, {plan[1] for plan in plans})
        shifts = []
        for kind, key, w, b, w_float in plans:
            if key not in self.means:
                continue
            mean_x, mean_q = self.means[key]
            w_q = np.frombuffer(bytes(model.buffers[w.buffer].data), np.int8).reshape(w.shape).astype(np.float64)
            scale_shape = [1] * w_q.ndim
            scale_shape[w.quantization.quantizedDimension] = -1
            w_q = w_q * np.asarray(w.quantization.scale, np.float64).reshape(scale_shape)
            w_f = np.frombuffer(bytes(ref.buffers[w_float.buffer].data), np.float32).reshape(w.shape).astype(np.float64)
            delta = _mean_output(w_f, mean_x, kind) - _mean_output(w_q, mean_q, kind)
            bias_q = np.frombuffer(bytes(model.buffers[b.buffer].data), np.int32).astype(np.int64)
            b_scale = np.broadcast_to(np.asarray(b.quantization.scale, np.float64), bias_q.shape)
            bias_q = np.clip(bias_q + np.round(delta / b_scale).astype(np.int64), -2**31, 2**31 - 1)
            model.buffers[b.buffer].data = bias_q.astype(np.int32).view(np.uint8)
            shifts.append(float(np.abs(delta).mean()))
        if shifts:
            save(model, int8_path)
        return {"method": "fast bias correction (per channel, FP32 inputs)", "layers": len(shifts),
                "images": int(len(self._chosen())),
                **({"mean_abs_shift": round(float(np.mean(shifts)), 6)} if shifts else {})}

    def _chosen(self) -> np.ndarray:
        return self.inputs[:: max(1, len(self.inputs) // MAX_IMAGES)][:MAX_IMAGES]

    def _measure(self, float_path: Path, keys: set) -> None:
        """Each key's FP32 mean per channel and the mean of its INT8 fake-quantization, over the
        chosen calibration images (the last axis is the channel: NHWC, or (1, C) before a
        FULLY_CONNECTED)."""
        it, index = interpreter_keeping_every_tensor(float_path, self.threads)
        keys = sorted(k for k in keys if k[0] in index)
        sums = {k: [0.0, 0.0] for k in keys}
        feed = it.get_input_details()[0]["index"]
        chosen = self._chosen()
        for x in progress(list(chosen), "bias correction (LiteRT)", "image", self.quiet):
            it.set_tensor(feed, x[None].astype(np.float32))
            it.invoke()
            for key in keys:
                name, scale, zero = key
                value = it.get_tensor(index[name]).astype(np.float64)
                value = value.reshape(-1, value.shape[-1])
                sums[key][0] += value.mean(axis=0)
                sums[key][1] += fake_quant(value, scale, zero, INT8_MIN, INT8_MAX).mean(axis=0)
        self.means = {k: (sx / len(chosen), sq / len(chosen)) for k, (sx, sq) in sums.items()}
        self.measured = True


def _mean_output(weight: np.ndarray, channel_mean: np.ndarray, kind: str) -> np.ndarray:
    """Mean output per channel of a TFLite layer (bias left out) fed inputs with these channel
    means, by the ONNX layout's rule: CONV_2D weights are (out, kh, kw, in), DEPTHWISE_CONV_2D
    (1, kh, kw, out) with out = in x multiplier, FULLY_CONNECTED (out, in)."""
    if kind == "fully_connected":
        return expected_output(weight, channel_mean, "Gemm", 1)
    if kind == "conv":
        return expected_output(weight.transpose(0, 3, 1, 2), channel_mean, "Conv", 1)
    return expected_output(weight.transpose(3, 0, 1, 2), channel_mean, "Conv", len(channel_mean))
