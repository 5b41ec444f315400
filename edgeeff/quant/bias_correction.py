"""Bias correction for QDQ ONNX models (ONNX Runtime's and edgeeff's TensorRT writer's).

Rounding weights and input activations shifts the mean of each layer's output channels: small
per channel, but depthwise convolutions (9 or 25 weights per channel) add it up. Bias
correction (Nagel et al., "Data-Free Quantization", 2019; NNCF's fast bias correction) measures
that shift per layer on calibration images and moves the layer's bias to cancel it. The bias
stays where the format keeps it: INT32 behind a DequantizeLinear (ONNX Runtime: the shift is
rounded to its grid) or float (TensorRT).

Correcting every layer at once from the QDQ model's own outputs over-corrects (a layer's mean
moves mostly because its inputs moved, which the upstream correction already fixes): measured
on the B0 test model, agreement fell from 92% to 48%. Each layer is therefore corrected for its
own rounding only, on FP32 inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..progress import progress
from .calibration import activation_bytes, bounded_runs
from .qdq import centring_offset

AFTER_OPTIMISE_KEY = "bias_correction_after_optimise"
SKIPPED_AFTER_OPTIMISE = ("the activation ranges were optimised against the FP32 model (--optimize), with the "
                          "weights' rounding in the loop; a per-layer correction afterwards moves every layer off "
                          f"what it chose (target key {AFTER_OPTIMISE_KEY}; docs/quantization.md)")


def wanted(quant: dict, ranges_optimised: bool) -> bool:
    """Whether a build corrects its biases: the target's `bias_correction`, except after `--optimize`
    set the activation ranges, where `bias_correction_after_optimise` decides (default: the same).
    The search and the refinement judge each range with the INT8 model's nearest-rounded weights and
    its other ranges in place, against the FP32 model's outputs; measured on the B0 test model, the
    correction afterwards raised KL(FP32 || INT8) by 14% (`onnx`) and 19% (`jetson-orin`) on unused
    calibration images. `jetson-orin` turns it off; `onnx` keeps it (agreement on val/ went the other
    way: docs/quantization.md)."""
    if not quant.get("bias_correction", False):
        return False
    return not ranges_optimised or bool(quant.get(AFTER_OPTIMISE_KEY, True))


def skipped_reason(quant: dict, ranges_optimised: bool) -> str | None:
    """The report's `bias_correction_skipped`: why a target that corrects its biases did not in
    this build (None when it did, or never does)."""
    if quant.get("bias_correction", False) and not wanted(quant, ranges_optimised):
        return SKIPPED_AFTER_OPTIMISE
    return None


def _augmented(model: onnx.ModelProto, outputs: list[str]) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in outputs:
        if name not in existing:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return copy.SerializeToString()


def _dequantized(init, scale_init, zero_init, axis: int | None = 0) -> np.ndarray:
    q = numpy_helper.to_array(init).astype(np.float64)
    scale = numpy_helper.to_array(scale_init).astype(np.float64)
    zero = numpy_helper.to_array(zero_init).astype(np.float64) if zero_init is not None else 0.0
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis or 0] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
    return (q - zero) * scale


def fake_quant(x: np.ndarray, scale: float, zero: float, qmin: int, qmax: int, in_place: bool = False) -> np.ndarray:
    """(clip(round(x / scale) + zero, qmin, qmax) - zero) * scale, in x's dtype, step by step on one
    array: a copy of x, or x itself with `in_place` (a scratch array the caller owns). The
    expression's temporaries made bias correction 4x slower (about 4 s of a Lite0 `onnx` compile);
    the results are bit-identical (tests/test_bias_correction.py)."""
    q = x if in_place else x.copy()
    q /= scale
    np.round(q, out=q)
    q += zero
    np.clip(q, qmin, qmax, out=q)
    q -= zero
    q *= scale
    return q


def expected_output(weight: np.ndarray, channel_mean: np.ndarray, op: str, group: int) -> np.ndarray:
    """Mean output per channel of a linear layer fed inputs with these per-channel means (the
    bias left out; borders ignored: padding pulls a border pixel towards zero for both models)."""
    if op != "Conv":
        return weight @ channel_mean  # Gemm with transB=1: (out, in)
    per_in = weight.sum(axis=(2, 3))  # (out, in / group)
    out_per_group = weight.shape[0] // group
    means = channel_mean.reshape(group, -1)  # (group, in / group)
    return np.einsum("gop,gp->go", per_in.reshape(group, out_per_group, -1), means).reshape(-1)


def correct_biases(qdq: onnx.ModelProto, fp32: onnx.ModelProto, inputs: np.ndarray, threads: int = 2,
                   quiet: bool = False, max_images: int = 128) -> dict:
    """Shift every quantized weighted layer's bias by the change quantization makes to its mean
    output per channel, layer by layer on FP32 inputs (NNCF's "fast bias correction"): for each
    layer, E[W x] - E[W_q q(x)], with x the layer's FP32 input on calibration images, q() its
    input Q/DQ and W_q its INT8 weights. Uses at most `max_images` of `inputs`, evenly spread (a
    mean per channel settles long before that). Mutates `qdq`; returns what was done."""
    inputs = inputs[:: max(1, len(inputs) // max_images)][:max_images]
    graph = qdq.graph
    producers = {out: node for node in graph.node for out in node.output}
    inits = {i.name: i for i in graph.initializer}
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    plans = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.name not in fp32_nodes or len(node.input) < 3:
            continue
        wdq, xdq = producers.get(node.input[1]), producers.get(node.input[0])
        if wdq is None or wdq.op_type != "DequantizeLinear" or xdq is None or xdq.op_type != "DequantizeLinear":
            continue  # a float layer, or a weight-only one: nothing to correct here
        xq = producers.get(xdq.input[0])
        if xq is None or xq.op_type != "QuantizeLinear":
            continue
        # A centred input (qdq.shiftable_tensors): Q/DQ sees x + offset, and the layer's bias took
        # the offset back, so the layer computes W_q (q(x + offset) - offset).
        offset = centring_offset(producers.get(xq.input[0]), inits) or 0.0
        original = fp32_nodes[node.name]
        if original.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in original.attribute):
            continue
        scale = float(numpy_helper.to_array(inits[xq.input[1]]))
        zero_init = inits.get(xq.input[2]) if len(xq.input) > 2 else None
        zero_array = numpy_helper.to_array(zero_init) if zero_init is not None else np.uint8(0)
        info = np.iinfo(zero_array.dtype)
        axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1)  # ONNX's default axis
        w_q = _dequantized(inits[wdq.input[0]], inits[wdq.input[1]],
                           inits.get(wdq.input[2]) if len(wdq.input) > 2 else None, axis=axis)
        w = numpy_helper.to_array(fp32_inits[original.input[1]]).astype(np.float64)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        plans.append((node, original.input[0], w, w_q, scale, float(zero_array), int(info.min), int(info.max), group,
                      offset))
    if not plans:
        return {"method": "fast bias correction", "layers": 0}
    tensors = list(dict.fromkeys(p[1] for p in plans))
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(_augmented(fp32, tensors), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    means = {p[0].name: (0.0, 0.0) for p in plans}
    readers = {}
    for plan in plans:
        readers.setdefault(plan[1], []).append(plan)
    per_image = activation_bytes(fp32, tensors)
    for start in progress(range(0, len(inputs), 8), "bias correction", "batch", quiet):
        # Memory-bounded calls (quant/calibration.py): a big model's inputs arrive in smaller pieces.
        for _, group, values in bounded_runs(session, input_name, tensors, per_image, inputs[start:start + 8]):
            for x_name, value in zip(group, values):
                axes = tuple(i for i in range(value.ndim) if i != 1)
                x_mean = value.mean(axis=axes, dtype=np.float64)
                for node, _x, _w, _wq, scale, zero, qmin, qmax, _g, offset in readers[x_name]:
                    mx, mq = means[node.name]
                    seen = value.astype(np.float64)  # fake_quant(x + offset) - offset, in float64
                    if offset:
                        seen += offset
                    fake_quant(seen, scale, zero, qmin, qmax, in_place=True)
                    if offset:
                        seen -= offset
                    means[node.name] = (mx + x_mean * len(value), mq + seen.mean(axis=axes) * len(value))
    shifts = []
    for node, _x, w, w_q, _s, _z, _lo, _hi, group, _offset in plans:
        mx, mq = (m / len(inputs) for m in means[node.name])
        delta = expected_output(w, mx, node.op_type, group) - expected_output(w_q, mq, node.op_type, group)
        _shift_bias(node, delta, producers, inits)
        shifts.append(float(np.abs(delta).mean()))
    return {"method": "fast bias correction (per channel, FP32 inputs)", "layers": len(plans),
            "images": len(inputs), "mean_abs_shift": round(float(np.mean(shifts)), 6)}


def _shift_bias(node, delta: np.ndarray, producers, inits) -> None:
    bias_name = node.input[2]
    bdq = producers.get(bias_name)
    if bdq is not None and bdq.op_type == "DequantizeLinear":  # ONNX Runtime: int32 bias on its grid
        q = inits[bdq.input[0]]
        scale = numpy_helper.to_array(inits[bdq.input[1]]).astype(np.float64)
        values = numpy_helper.to_array(q).astype(np.int64) + np.round(delta / scale).astype(np.int64)
        q.CopyFrom(numpy_helper.from_array(np.clip(values, -2**31, 2**31 - 1).astype(np.int32), q.name))
    elif bias_name in inits:  # float bias (TensorRT)
        b = inits[bias_name]
        b.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(b) + delta).astype(np.float32), b.name))
