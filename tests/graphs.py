"""Tiny ONNX graphs shaped like EfficientNet, built in code, for fast graph-level tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_efficientnet(opset: int = 18, act: str = "swish") -> onnx.ModelProto:
    """stem conv + act, a block (depthwise + act, SE, projection, residual Add), pool, classifier.
    act: swish (Sigmoid + Mul), hswish (HardSwish, opset >= 14) or relu6 (Clip 0..6)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def w(name, *shape):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name))
        return name

    def conv(x, out, cin, cout, k=1, group=1):
        nodes.append(helper.make_node("Conv", [x, w(out + "_w", cout, cin // group, k, k), w(out + "_b", cout)], [out],
                                      pads=[k // 2] * 4, group=group, name=out))
        return out

    def swish(x, out):
        if act == "relu6":
            nodes.append(helper.make_node("Clip", [x, "six_min", "six_max"], [out], name=out))
            return out
        if act == "hswish":
            nodes.append(helper.make_node("HardSwish", [x], [out], name=out))
            return out
        nodes.append(helper.make_node("Sigmoid", [x], [out + "_sig"], name=out + "_sig"))
        nodes.append(helper.make_node("Mul", [x, out + "_sig"], [out], name=out))
        return out

    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "six_min"))
    inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "six_max"))

    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    inits.append(axes)
    x = swish(conv("input", "stem", 3, 8, 3), "stem_act")
    h = swish(conv(x, "dw", 8, 8, 3, group=8), "dw_act")
    nodes.append(helper.make_node("ReduceMean", [h, "axes"], ["se_pool"], keepdims=1, name="se_pool"))
    s = swish(conv("se_pool", "se_reduce", 8, 4), "se_act")
    conv(s, "se_expand", 4, 8)
    nodes.append(helper.make_node("Sigmoid", ["se_expand"], ["se_gate"], name="se_gate"))
    nodes.append(helper.make_node("Mul", [h, "se_gate"], ["se_out"], name="se_mul"))
    conv("se_out", "project", 8, 8)
    nodes.append(helper.make_node("Add", ["project", x], ["block_out"], name="residual"))
    nodes.append(helper.make_node("ReduceMean", ["block_out", "axes"], ["pooled"], keepdims=0, name="head_pool"))
    nodes.append(helper.make_node("Gemm", ["pooled", w("fc_w", 10, 8), w("fc_b", 10)], ["logits"], transB=1,
                                  name="fc"))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
