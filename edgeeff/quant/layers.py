"""Quantizable layers of an ONNX classifier, and keeping some of them in float in a QDQ model.

A *layer* is what the sensitivity analysis ranks and the --max-drop fallback keeps in float: one
weighted node (Conv, Gemm, MatMul) together with the activation right after it (ReLU6's Clip,
Relu, HardSwish, swish's Sigmoid + Mul, or the Sigmoid of a squeeze-excitation gate). The
activation goes with its layer because keeping a Conv float while its activation stays quantized
still rounds the conv's unbounded output (measured on Lite0: keeping block 0's depthwise conv
float that way lowered agreement from 98.15% to 92.77%).

Layer names are the ONNX names of their weighted nodes. Every backend that starts from edgeeff's
FP32 ONNX keeps them (ONNX Runtime, OpenVINO's converter), so one name means the same layer in
every table.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .qdq import centring_offset

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
SINGLE_ACTIVATIONS = ("Clip", "Relu", "HardSwish", "Sigmoid")


@dataclass(frozen=True)
class Layer:
    name: str  # the weighted node's name
    op: str  # Conv | Gemm | MatMul
    kind: str  # depthwise | pointwise | conv | fc
    nodes: tuple[str, ...]  # the weighted node, then its activation's nodes
    weight: str | None  # the weight initializer's name in the FP32 model
    shape: tuple[int, ...]  # the weight's shape

    def as_dict(self) -> dict:
        return {"layer": self.name, "op": self.op, "kind": self.kind, "weight_shape": list(self.shape)}


def consumers_of(graph) -> dict[str, list]:
    out = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            out[name].append(node)
    return out


def _activation_nodes(node, consumers) -> list[str]:
    after = consumers.get(node.output[0], [])
    if len(after) == 1 and after[0].op_type in SINGLE_ACTIVATIONS:
        return [after[0].name]
    if len(after) == 2 and {n.op_type for n in after} == {"Sigmoid", "Mul"}:
        sigmoid = next(n for n in after if n.op_type == "Sigmoid")
        mul = next(n for n in after if n.op_type == "Mul")
        if sigmoid.output[0] in mul.input:  # x * sigmoid(x): swish
            return [sigmoid.name, mul.name]
    return []


def _kind(node, shape) -> str:
    if node.op_type != "Conv":
        return "fc"
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if group > 1 and group == shape[0]:
        return "depthwise"
    return "pointwise" if len(shape) == 4 and shape[2:] == (1, 1) else "conv"


def find_layers(model: onnx.ModelProto) -> list[Layer]:
    """The model's quantizable layers in graph order."""
    graph = model.graph
    consumers = consumers_of(graph)
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    layers = []
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in shapes:
            continue
        shape = shapes[node.input[1]]
        layers.append(Layer(node.name, node.op_type, _kind(node, shape),
                            (node.name, *_activation_nodes(node, consumers)), node.input[1], shape))
    return layers


# ---------------------------------------------------------------------------------------------
# Keeping layers in float in a QDQ model (ONNX Runtime's, or edgeeff's TensorRT writer's)


def _qdq_pairs(graph, initializers: set[str]):
    """activation tensor -> (its QuantizeLinear, [the DequantizeLinear nodes reading it])."""
    consumers = consumers_of(graph)
    pairs = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
            dqs = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
            pairs[node.input[0]] = (node, dqs)
    return pairs


def keep_float(int8: onnx.ModelProto, fp32: onnx.ModelProto, float_layers: list[str],
               needed_by: str = "neighbours") -> onnx.ModelProto:
    """A copy of a QDQ model in which `float_layers` (names from find_layers) run in float.

    `fp32` is the float model the QDQ model was quantized from (same node and weight names): a
    float layer gets its original weights back, not the INT8 ones dequantized. Ops between
    layers (pooling, residual Add, SE multiply) run in float when all their inputs come from float
    ops. An activation tensor loses its Q/DQ pair when every op that needs it quantized is float:
      needed_by="neighbours"  the ops producing and reading it (ONNX Runtime: its INT8 kernels
                              take and give quantized tensors)
      needed_by="consumers"   the ops reading it (TensorRT: Q/DQ marks a layer's input; a
                              producer's output is quantized only for its readers)
    """
    if not float_layers:
        return int8
    model = onnx.ModelProto()
    model.CopyFrom(int8)
    graph = model.graph
    layers = {layer.name: layer for layer in find_layers(fp32)}
    unknown = [name for name in float_layers if name not in layers]
    if unknown:
        raise ValueError(f"not layers of this model: {', '.join(unknown)}")
    initializers = {i.name: i for i in graph.initializer}
    fp32_weights = {i.name: i for i in fp32.graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    float_nodes = _float_nodes(graph, {n for name in float_layers for n in layers[name].nodes},
                               {n for layer in layers.values() for n in layer.nodes}, producers, set(initializers))

    def uncentred(tensor: str) -> str:
        """A Q/DQ pair's float tensor as the float layer needs it: TensorRT's centred inputs
        (quant/qdq.py build_qdq) are the tensor plus a constant, which only the INT8 layer's
        moved bias takes back; a float layer reads the tensor itself with its FP32 bias."""
        p = producers.get(tensor)
        return p.input[0] if centring_offset(p, initializers) is not None else tensor

    drop, rename = set(), {}
    for tensor, (q, dqs) in _qdq_pairs(graph, set(initializers)).items():
        producer = {producers[tensor].name} if tensor in producers else set()
        readers = {c.name for dq in dqs for c in graph.node if dq.output[0] in c.input}
        needing = producer | readers if needed_by == "neighbours" else readers
        if not needing or not needing <= float_nodes:
            if needed_by == "consumers":  # float readers take the tensor before the pair
                for reader in (c for dq in dqs for c in graph.node if dq.output[0] in c.input):
                    if reader.name in float_nodes:
                        for i, name in enumerate(reader.input):
                            if name in {dq.output[0] for dq in dqs}:
                                reader.input[i] = uncentred(tensor)
            continue  # a quantized op still takes or gives this tensor quantized
        drop.add(q.name)
        for dq in dqs:
            drop.add(dq.name)
            rename[dq.output[0]] = uncentred(tensor)
    # Weights and bias: the float layer reads the FP32 initializers (not the INT8 weights
    # dequantized, nor a bias that bias correction moved to suit them).
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    added = set()
    for name in float_layers:
        node = next(n for n in graph.node if n.name == name)
        original = fp32_nodes[name]
        for slot in (1, 2):
            if len(node.input) <= slot or len(original.input) <= slot or original.input[slot] not in fp32_weights:
                continue
            float_name = f"{original.input[slot]}__float"
            if float_name not in added:
                tensor = numpy_helper.to_array(fp32_weights[original.input[slot]])
                graph.initializer.append(numpy_helper.from_array(tensor, float_name))
                added.add(float_name)
            node.input[slot] = float_name
    _restore_folded_activations(graph, fp32, [layers[name] for name in float_layers])
    kept = [n for n in graph.node if n.name not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    remove_dead(graph)
    return model


def _restore_folded_activations(graph, fp32: onnx.ModelProto, float_layers: list[Layer]) -> None:
    """ONNX Runtime's quantizer folds a ReLU6 Clip (or Relu) into the Q range after the conv and
    drops the node, giving the conv the Clip's output name. A float layer needs it back."""
    present = {n.name for n in graph.node}
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    inits = {i.name for i in graph.initializer}
    for layer in float_layers:
        missing = [fp32_nodes[n] for n in layer.nodes[1:] if n not in present]
        if not missing:
            continue
        position, conv = next((i, n) for i, n in enumerate(graph.node) if n.name == layer.name)
        conv.output[0] = fp32_nodes[layer.name].output[0]
        for offset, node in enumerate(missing, start=1):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            graph.node.insert(position + offset, copy)
            for name in copy.input:
                if name in fp32_inits and name not in inits:
                    graph.initializer.append(fp32_inits[name])
                    inits.add(name)


def _float_nodes(graph, float_layer_nodes: set[str], layer_nodes: set[str], producers, initializers) -> set[str]:
    """The float layers' nodes, plus the ops between layers (pooling, residual Add, the SE
    multiply) whose every input comes, through Q/DQ, from float nodes: those run in float too."""
    floats = set(float_layer_nodes)
    for node in graph.node:  # graph order is topological
        if node.name in layer_nodes or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        sources = []
        for name in node.input:
            if not name or name in initializers:
                continue
            source = producers.get(name)
            while source is not None and source.op_type in ("QuantizeLinear", "DequantizeLinear"):
                source = producers.get(source.input[0])
            sources.append(source)
        if sources and all(src is not None and src.name in floats for src in sources):
            floats.add(node.name)
    return floats


def remove_dead(graph) -> None:
    """Drop nodes whose outputs nobody reads (an orphaned weight DequantizeLinear), then
    initializers no node reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `test` against `reference`, in dB (higher: closer)."""
    noise = float(((reference.astype(np.float64) - test) ** 2).sum())
    signal = float((reference.astype(np.float64) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)
