#!/usr/bin/env python3
"""Experimental rewrites of an INT8 QDQ EfficientNet for ONNX Runtime speed (research, not used by compile).

Each rewrite changes the QDQ model file; `scripts/profile_ort.py FP32 INT8 REWRITTEN` then times
them in turns. What was measured is in docs/benchmarks.md ("ONNX Runtime: where B0's INT8 time goes"):

  gap        ReduceMean over H, W -> GlobalAveragePool, which ORT fuses to QLinearGlobalAveragePool
             (adopted by compile: edgeeff.backends.onnxruntime.spatial_means_as_global_pools)
  floatstem  the stem conv in float on the float input (no input Q/DQ, dequantized weights)
  quickgelu  each swish (Sigmoid + Mul of one tensor) as one float QuickGelu between its DQ and Q
  lut        each swish as an exact 256-entry uint8 table: Cast to int32 + Gather

    python scripts/research/ort_graph_rewrites.py IN.onnx OUT.onnx gap,floatstem
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgeeff.backends.onnxruntime import spatial_means_as_global_pools  # noqa: E402


class Graph:
    """Producer / consumer / initializer lookups over an ONNX graph, rebuilt after each rewrite."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {init.name: init for init in self.graph.initializer}

    def made_by(self, tensor: str, op: str):
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == op else None

    def value(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def insert_before(self, anchor, *nodes) -> None:
        index = list(self.graph.node).index(anchor)
        for offset, node in enumerate(nodes):
            self.graph.node.insert(index + offset, node)

    def drop_unused_initializers(self) -> None:
        used = {name for node in self.graph.node for name in node.input}
        for init in [i for i in self.graph.initializer if i.name not in used]:
            self.graph.initializer.remove(init)


def swishes(g: Graph):
    """Each quantized swish: (dq_x, sigmoid's Q, sigmoid's DQ, Sigmoid, Mul, the Mul's output Q)."""
    found = []
    for mul in [n for n in g.graph.node if n.op_type == "Mul"]:
        for a, b in ((0, 1), (1, 0)):
            dq_x, dq_s = g.made_by(mul.input[a], "DequantizeLinear"), g.made_by(mul.input[b], "DequantizeLinear")
            q_s = dq_s and g.made_by(dq_s.input[0], "QuantizeLinear")
            sigmoid = q_s and g.made_by(q_s.input[0], "Sigmoid")
            dq_in = sigmoid and g.made_by(sigmoid.input[0], "DequantizeLinear")
            outs = g.consumers.get(mul.output[0], [])
            if dq_x and dq_in and dq_in.input[0] == dq_x.input[0] and len(outs) == 1 \
                    and outs[0].op_type == "QuantizeLinear":
                found.append((dq_x, dq_in, q_s, dq_s, sigmoid, mul, outs[0]))
                break
    return found


def remove_if_unused(g: Graph, node, gone: set) -> None:
    if all(c.name in gone for out in node.output for c in g.consumers.get(out, [])):
        g.graph.node.remove(node)


def float_stem(g: Graph) -> int:
    input_q = g.consumers[g.graph.input[0].name][0]
    input_dq = g.consumers[input_q.output[0]][0]
    conv = g.consumers[input_dq.output[0]][0]
    assert (input_q.op_type, input_dq.op_type, conv.op_type) == ("QuantizeLinear", "DequantizeLinear", "Conv")
    conv.input[0] = g.graph.input[0].name
    for k in range(1, len(conv.input)):  # weights and bias: dequantized once, stored as float
        dq = g.made_by(conv.input[k], "DequantizeLinear")
        if dq is None:
            continue
        q, scale = g.value(dq.input[0]).astype(np.float32), g.value(dq.input[1]).astype(np.float32)
        zero = g.value(dq.input[2]).astype(np.float32) if len(dq.input) > 2 else np.float32(0)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        weights = (q - (zero.reshape(shape) if zero.ndim else zero)) * (scale.reshape(shape) if scale.ndim else scale)
        g.graph.initializer.append(numpy_helper.from_array(weights.astype(np.float32), conv.input[k] + "_float"))
        conv.input[k] += "_float"
        g.graph.node.remove(dq)
    g.graph.node.remove(input_q)
    g.graph.node.remove(input_dq)
    return 1


def quickgelu_swish(g: Graph) -> int:
    found = swishes(g)
    for dq_x, dq_in, q_s, dq_s, sigmoid, mul, _ in found:
        g.insert_before(mul, helper.make_node("QuickGelu", [dq_x.output[0]], list(mul.output), name=mul.name + "_swish",
                                              domain="com.microsoft", alpha=1.0))
        gone = {n.name for n in (q_s, dq_s, sigmoid, mul)}
        for node in (mul, dq_s, q_s, sigmoid):
            g.graph.node.remove(node)
        if dq_in is not dq_x:
            remove_if_unused(g, dq_in, gone)
    if not any(o.domain == "com.microsoft" for o in g.model.opset_import):
        g.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(found)


def table_swish(g: Graph) -> int:
    found = swishes(g)
    for dq_x, dq_in, q_s, dq_s, sigmoid, mul, q_out in found:
        x_scale, x_zero = float(g.value(dq_x.input[1])), int(g.value(dq_x.input[2]))
        s_scale, s_zero = float(g.value(q_s.input[1])), int(g.value(q_s.input[2]))
        o_scale, o_zero = float(g.value(q_out.input[1])), int(g.value(q_out.input[2]))
        x = (np.arange(256, dtype=np.float32) - x_zero) * x_scale
        gate = np.clip(np.round(1 / (1 + np.exp(-x)) / s_scale) + s_zero, 0, 255)  # the two-step arithmetic
        table = np.clip(np.round(x * (gate - s_zero) * s_scale / o_scale) + o_zero, 0, 255).astype(np.uint8)
        g.graph.initializer.append(numpy_helper.from_array(table, mul.name + "_table"))
        g.insert_before(mul,
                        helper.make_node("Cast", [dq_x.input[0]], [mul.name + "_index"], to=onnx.TensorProto.INT32,
                                         name=mul.name + "_cast"),
                        helper.make_node("Gather", [mul.name + "_table", mul.name + "_index"], [q_out.output[0]],
                                         axis=0, name=mul.name + "_gather"))
        gone = {n.name for n in (q_out, mul, dq_s, q_s, sigmoid)}
        for node in (q_out, mul, dq_s, q_s, sigmoid):
            g.graph.node.remove(node)
        for node in {id(dq_x): dq_x, id(dq_in): dq_in}.values():
            remove_if_unused(g, node, gone)
    return len(found)


REWRITES = {"gap": lambda g: spatial_means_as_global_pools(g.model), "floatstem": float_stem,
            "quickgelu": quickgelu_swish, "lut": table_swish}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("rewrites", help=f"comma-separated, applied in order: {', '.join(REWRITES)}")
    args = parser.parse_args()
    model = onnx.load(str(args.source))
    for name in args.rewrites.split(","):
        if name not in REWRITES:
            sys.exit(f"unknown rewrite {name!r}: choose from {', '.join(REWRITES)}")
        graph = Graph(model)
        print(f"{name}: {REWRITES[name](graph)} rewritten")
        Graph(model).drop_unused_initializers()
    onnx.save(model, str(args.destination))


if __name__ == "__main__":
    main()
