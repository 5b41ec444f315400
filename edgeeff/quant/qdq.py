"""Explicitly quantized (QDQ) ONNX for TensorRT, and the static check of TensorRT's rules.

TensorRT 10 deprecated implicit INT8 calibration and 11 removed it: INT8 on TensorRT means an
ONNX model whose QuantizeLinear/DequantizeLinear (Q/DQ) nodes say exactly which tensors are INT8
and with which scale. ONNX Runtime's quantizer places Q/DQ by its own rules (its Q/DQ sit on
conv outputs, its activations are uint8), so edgeeff places them itself, following TensorRT's
documented rules, with ranges from edgeeff's calibration (edgeeff/quant/calibration.py):

  * symmetric INT8 everywhere: zero point 0, int8 type; activations in [-128, 127], weights in
    [-127, 127]
  * weights: constant INT8 initializers behind a DequantizeLinear, per output channel (axis 0)
  * activations: per-tensor scale; Q/DQ on the data input of every Conv/Gemm and on the skip
    input of every residual Add; none on weighted ops' outputs (TensorRT fuses Conv+activation
    and quantizes the fused output only where the next layer asks for it)
  * bias stays float (TensorRT folds it into the INT8 kernel itself)
  * around swish and the squeeze-excitation block, the placement is the measured one
    (PLACEMENTS below; figures in docs/jetson.md)

`check_tensorrt_rules` verifies every model this module writes and raises on a violation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UserError

WEIGHTED = ("Conv", "Gemm")
# Placements around swish and squeeze-excitation (docs/jetson.md has the measurements):
#   conv_inputs  Q/DQ on Conv/Gemm data inputs and residual Add skip inputs only
#   nvidia       + on the inputs of every average pool and of the SE multiply (the swish output
#                that feeds the pool and the multiply, and the SE gate): NVIDIA's placement for
#                EfficientNet, lets TensorRT run pool and multiply in INT8
#   inside_swish + on the conv output before swish and the swish sigmoid: measured worse; it
#                breaks TensorRT's Conv+swish fusion, so the rules check refuses it (research only)
PLACEMENTS = ("conv_inputs", "nvidia", "inside_swish")
ACT_MIN, ACT_MAX = -128, 127
WEIGHT_MAX = 127


class QDQRuleError(UserError):
    """A QDQ model breaks a rule TensorRT's explicit quantization depends on."""


# ---------------------------------------------------------------------------------------------
# Graph preparation


def prepare_for_tensorrt(model: onnx.ModelProto, opset: int | None = None) -> onnx.ModelProto:
    """ReduceMean over H, W -> GlobalAveragePool (+ Flatten when keepdims=0), HardSwish spelled
    out below opset 14, then `opset`.

    torch's exporter writes average pooling as ReduceMean(axes=[2, 3]); from opset 18 its axes
    are an input, which TensorRT 8.2 (Jetson Nano, ONNX opsets <= 13) cannot parse, and ONNX
    Runtime cannot quantize it. GlobalAveragePool is the same arithmetic in every opset, and
    TensorRT maps it to a pooling layer it runs in INT8 between Q/DQ.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    new_nodes = []
    for node in graph.node:
        if node.op_type != "ReduceMean":
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in consts:
            axes = consts[node.input[1]].tolist()
        if sorted(int(a) for a in (axes or [])) not in ([2, 3], [-2, -1]):
            new_nodes.append(node)
            continue
        keep = attrs.get("keepdims", 1)
        pooled = node.output[0] if keep else node.output[0] + "_pooled"
        new_nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name + "_gap"))
        if not keep:
            new_nodes.append(helper.make_node("Flatten", [pooled], [node.output[0]], axis=1,
                                              name=node.name + "_flatten"))
    del graph.node[:]
    graph.node.extend(new_nodes)
    strip_unused_initializers(model)
    if opset is not None and opset < 14:
        decompose_hard_swish(model)  # TensorRT 8.2 (Jetson Nano) parses opset 13, before HardSwish
    if opset is not None:
        set_opset(model, opset)
    del model.graph.value_info[:]
    return model


# Ops whose newer versions (14-16) only added tensor types (bfloat16, int8 Relu, optional
# Identity) that the exporter's float32 graphs never use: the same op for us from opset 13 on.
_TYPES_ONLY_CHANGES = {"Add", "Mul", "Relu", "Identity"}


def _same_op(op_type: str, high: int, low: int) -> bool:
    """Whether `op_type` at opset `high` is the op of the same definition at opset `low`
    (onnx's own schemas: the version each opset resolves to)."""
    try:
        return (onnx.defs.get_schema(op_type, high).since_version == onnx.defs.get_schema(op_type, low).since_version
                or op_type in _TYPES_ONLY_CHANGES)
    except onnx.defs.SchemaError:  # the op does not exist at `low`
        return False


def decompose_hard_swish(model: onnx.ModelProto) -> int:
    """HardSwish(x) -> x * HardSigmoid(x; 1/6, 1/2), the same function, for opsets before 14
    (HardSwish's first) and parsers that lack it. Returns how many were rewritten."""
    new_nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type != "HardSwish":
            new_nodes.append(node)
            continue
        gate = node.output[0] + "_hsig"
        new_nodes.append(helper.make_node("HardSigmoid", [node.input[0]], [gate], alpha=1 / 6, beta=0.5,
                                          name=node.name + "_hsig"))
        new_nodes.append(helper.make_node("Mul", [node.input[0], gate], [node.output[0]], name=node.name))
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return count


def set_opset(model: onnx.ModelProto, opset: int) -> None:
    """Re-declare the model at `opset` (13-18) when every op means the same there.

    onnx's version converter has no down-adapters (e.g. Add 14 -> 13), so this checks each op's
    definition in onnx's schemas instead and lets onnx.checker validate the result against the
    lower opset's schemas.
    """
    entry = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if entry.version == opset:
        return
    if not 13 <= opset <= 18 or entry.version > 18:
        raise UserError(f"cannot re-declare an opset-{entry.version} model at opset {opset} (13-18 only)")
    others = sorted({n.op_type for n in model.graph.node if not _same_op(n.op_type, entry.version, opset)})
    if others:
        raise UserError(f"cannot lower the model to opset {opset}: {', '.join(others)} changed meaning")
    entry.version = opset
    onnx.checker.check_model(model, full_check=False)


def strip_unused_initializers(model: onnx.ModelProto) -> int:
    """Remove initializers no node reads (the FP32 weights Q/DQ replaced). Returns how many."""
    used = {i for n in model.graph.node for i in n.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    dropped = len(model.graph.initializer) - len(keep)
    if dropped:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return dropped


# ---------------------------------------------------------------------------------------------
# Placement


@dataclass
class Placement:
    name: str
    tensors: dict[str, str] = field(default_factory=dict)  # tensor -> why it is quantized

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for why in self.tensors.values():
            out[why] = out.get(why, 0) + 1
        return out


def _graph_maps(graph):
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def _is_swish(node, producer) -> bool:
    """Mul(x, Sigmoid(x)): swish/SiLU."""
    if node.op_type != "Mul" or len(node.input) != 2:
        return False
    for a, b in (node.input, node.input[::-1]):
        p = producer.get(b)
        if p is not None and p.op_type == "Sigmoid" and p.input[0] == a:
            return True
    return False


def _se_multiply_inputs(node, producer) -> tuple[str, str] | None:
    """Mul(x, Sigmoid(Conv(...))) with x not the sigmoid's input: squeeze-excitation's scaling.
    Returns (features, gate)."""
    if node.op_type != "Mul" or len(node.input) != 2 or _is_swish(node, producer):
        return None
    for x, g in (node.input, node.input[::-1]):
        p = producer.get(g)
        if p is not None and p.op_type == "Sigmoid" and p.input[0] != x:
            src = producer.get(p.input[0])
            if src is not None and src.op_type in WEIGHTED:
                return x, g
    return None


def residual_adds(graph, initializers: set[str]):
    """Add nodes of two activations: (node, skip input).

    The skip input is the block's input: it also feeds the block's first layer (more than one
    consumer), and was made earlier than the residual branch (the project conv's output, read
    only by the Add). Both may come from a Conv, so "the input no Conv made" is not enough.
    """
    producer, consumers = _graph_maps(graph)
    order = {id(n): k for k, n in enumerate(graph.node)}
    out = []
    for n in graph.node:
        if n.op_type != "Add" or len(n.input) != 2 or any(i in initializers for i in n.input):
            continue
        sources = [_before_qdq(producer, i) for i in n.input]
        fanout = [len(consumers.get(t, [])) for t in sources]
        made = [order.get(id(producer[t]), -1) if t in producer else -1 for t in sources]
        k = max(range(2), key=lambda j: (fanout[j] > 1, -made[j]))
        out.append((n, n.input[k]))
    return out


def _before_qdq(producer, tensor):
    """The float tensor behind a Q->DQ pair (or `tensor` itself)."""
    p = producer.get(tensor)
    if p is not None and p.op_type == "DequantizeLinear":
        q = producer.get(p.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
    return tensor


def plan_placement(model: onnx.ModelProto, placement: str = "nvidia") -> Placement:
    """Which activation tensors get a Q/DQ pair, and why."""
    if placement not in PLACEMENTS:
        raise UserError(f"QDQ placement {placement!r}: unknown; known: {', '.join(PLACEMENTS)}")
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    producer, consumers = _graph_maps(graph)
    plan = Placement(placement)

    def add(t, why):
        if t and t not in inits and t not in plan.tensors:
            plan.tensors[t] = why

    for n in graph.node:
        if n.op_type in WEIGHTED:
            add(n.input[0], f"{n.op_type.lower()}_input")
    for n, skip in residual_adds(graph, inits):
        add(skip, "residual_add_input")
    if placement in ("nvidia", "inside_swish"):
        for n in graph.node:
            if n.op_type in ("GlobalAveragePool", "AveragePool", "ReduceMean"):
                add(n.input[0], "pool_input")
            se = _se_multiply_inputs(n, producer)
            if se:
                add(se[0], "se_multiply_input")
                add(se[1], "se_gate")
    if placement == "inside_swish":
        for n in graph.node:
            if _is_swish(n, producer):
                for i in n.input:
                    add(i, "inside_swish")
    return plan


# ---------------------------------------------------------------------------------------------
# Building


def activation_scale(low: float, high: float) -> np.float32:
    bound = max(abs(float(low)), abs(float(high)))
    return np.float32(max(bound, 1e-8) / ACT_MAX)


def centred_grid(low: float, high: float) -> tuple[np.float32, np.float32]:
    """TensorRT's grid for a centred tensor (`build_qdq`'s `shifted`): (m, scale). The Add before
    the Q subtracts m (the middle of the range), the Q has zero point 0 and the scale of half the
    range, and the reader's bias adds m back. One definition for the file and for the simulation
    that optimises it (quant/optimise.py), so the two cannot drift apart.

    Where m sits within a step matters a great deal and is left at the middle: measured on the B0
    test model (`jetson`, 200 held-out calibration images), moving every m so that zero is a grid
    point took agreement from 93.5% to 84.5% (KL 0.059 -> 0.69), and moving it to the
    histogram's least-squares position to 92.5% (KL 0.106); docs/jetson.md."""
    middle = np.float32((float(low) + float(high)) / 2)
    scale = activation_scale(float(low) - float(middle), float(high) - float(middle))
    return middle, scale


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel INT8 in [-127, 127]: (int8 weights, float32 scales)."""
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = (np.maximum(flat, 1e-12) / WEIGHT_MAX).astype(np.float32)
    q = np.clip(np.round(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -WEIGHT_MAX, WEIGHT_MAX)
    return q.astype(np.int8), scale


def _reads_pointwise(node, inits: dict) -> bool:
    """A Conv with a 1x1 kernel, no padding and no groups, or a Gemm: a constant added to its input
    changes each output channel by a constant (so the bias can take it back exactly)."""
    if node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in inits:
        return False
    if node.op_type == "Gemm":
        return True
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return (list(inits[node.input[1]].dims[2:]) == [1, 1] and not any(attrs.get("pads", []))
            and int(attrs.get("group", 1)) == 1 and auto_pad in ("NOTSET", "VALID"))


def shiftable_tensors(model: onnx.ModelProto, plan: Placement) -> list[str]:
    """The planned tensors that only 1x1 convs (or the classifier) read.

    TensorRT's activations have zero point 0, so a tensor in [-0.28, 12] (a swish output, the SE
    multiply's output) spends half its 255 steps on [-12, -0.28], which it never holds. Adding a
    constant -m before its Q (m the middle of its range) centres it, and a 1x1 conv without padding
    turns the constant into m * sum(W) per output channel, which its bias takes back: exact in
    float, and TensorRT fuses the Add into the pointwise kernel that writes the INT8 tensor. Not
    for k x k convs: their zero padding would become -m."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    _, consumers = _graph_maps(graph)
    return [t for t in plan.tensors if consumers.get(t) and all(_reads_pointwise(n, inits) for n in consumers[t])]


def build_qdq(model: onnx.ModelProto, plan: Placement, ranges: dict[str, tuple[float, float]],
              shifted: dict[str, tuple[float, float]] | None = None) -> onnx.ModelProto:
    """Insert Q/DQ pairs on `plan`'s tensors (scales from `ranges`) and INT8 per-channel weights.

    `shifted`: tensor -> its own (asymmetric) range, for tensors of `shiftable_tensors`: each is
    centred by an Add before its Q/DQ, and its readers' biases take the constant back."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    shifted = shifted or {}
    missing = [t for t in plan.tensors if t not in ranges and t not in shifted]
    if missing:
        raise UserError(f"no calibration range for {len(missing)} tensor(s), e.g. {missing[0]}")
    new_nodes, new_inits, rename = [], [], {}
    grids = {t: centred_grid(*shifted[t]) for t in shifted}  # shifted tensor -> (m, scale)
    centres = {t: middle for t, (middle, _) in grids.items()}
    for t in shifted:
        new_inits.append(numpy_helper.from_array(np.array(-centres[t], np.float32), f"{t}_shift"))
        new_nodes.append(helper.make_node("Add", [t, f"{t}_shift"], [f"{t}_centred"], name=f"{t}_centre"))
    for t in plan.tensors:
        if t in centres:  # the centred tensor spans [-half, half]
            source, scale = f"{t}_centred", grids[t][1]
        else:
            source, scale = t, activation_scale(*ranges[t])
        s, z = f"{t}_qdq_scale", f"{t}_qdq_zero"
        new_inits += [numpy_helper.from_array(np.array(scale, np.float32), s),
                      numpy_helper.from_array(np.array(0, np.int8), z)]
        new_nodes += [helper.make_node("QuantizeLinear", [source, s, z], [f"{t}_q"], name=f"{t}_Q"),
                      helper.make_node("DequantizeLinear", [f"{t}_q", s, z], [f"{t}_dq"], name=f"{t}_DQ")]
        rename[t] = f"{t}_dq"
    quantized_weights = {}
    for n in graph.node:
        centre = None
        for k, x in enumerate(n.input):
            if x in rename:
                centre = centres.get(x, centre)
                n.input[k] = rename[x]
        if n.op_type not in WEIGHTED or len(n.input) < 2 or n.input[1] not in inits:
            continue
        wname = n.input[1]
        if centre is not None:
            _take_back_shift(n, inits, new_inits, centre)
        if n.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if not attrs.get("transB", 0):
                raise UserError(f"{n.name}: Gemm without transB: its output channels are not axis 0")
        if wname not in quantized_weights:
            q, scale = quantize_weight(numpy_helper.to_array(inits[wname]).astype(np.float32))
            new_inits += [numpy_helper.from_array(q, f"{wname}_int8"),
                          numpy_helper.from_array(scale, f"{wname}_scale"),
                          numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{wname}_zero")]
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{wname}_int8", f"{wname}_scale", f"{wname}_zero"],
                                              [f"{wname}_dq"], axis=0, name=f"{wname}_DQ"))
            quantized_weights[wname] = f"{wname}_dq"
        n.input[1] = quantized_weights[wname]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    _topological_sort(graph)
    strip_unused_initializers(model)
    return model


def centring_offset(node, inits) -> float | None:
    """The constant a centring Add of build_qdq adds to its input (-m), or None for any other node."""
    if node is not None and node.op_type == "Add" and node.name.endswith("_centre") and node.input[1] in inits:
        return float(numpy_helper.to_array(inits[node.input[1]]))
    return None


def _take_back_shift(node, inits: dict, new_inits: list, centre: np.float32) -> None:
    """The reader of a centred tensor: bias += centre * sum of its INT8 weights (dequantized) per
    output channel, so that conv(x - centre) + bias' = conv(x) + bias with the weights it runs."""
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    q, scale = quantize_weight(w)
    dequantized = q.astype(np.float32) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    added = centre * dequantized.reshape(w.shape[0], -1).sum(axis=1)
    if len(node.input) > 2 and node.input[2]:
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
    else:
        bias = np.zeros(w.shape[0], np.float32)
        while len(node.input) < 3:
            node.input.append("")
    name = f"{node.name or node.output[0]}_bias_centred"
    new_inits.append(numpy_helper.from_array((bias + added).astype(np.float32), name))
    node.input[2] = name


def _topological_sort(graph) -> None:
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(x in ready for x in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or an input no node produces")
        pending = rest
    del graph.node[:]
    graph.node.extend(order)


# ---------------------------------------------------------------------------------------------
# The rules check


def tensorrt_rule_violations(model: onnx.ModelProto, max_opset: int | None = None,
                             allow_activation_qdq: bool = False, float_layers: tuple[str, ...] = ()) -> list[str]:
    """Every way `model` breaks TensorRT's explicit-quantization rules (empty: it follows them).

    allow_activation_qdq: accept Q/DQ between a weighted op and its activation and inside swish
    (only for measuring that placement; TensorRT then cannot fuse Conv+activation).
    float_layers: weighted nodes the --max-drop fallback keeps in float: they must read float
    weights and an unquantized input (TensorRT then runs them in FP16).
    """
    graph = model.graph
    problems: list[str] = []
    inits = {i.name: i for i in graph.initializer}
    producer, consumers = _graph_maps(graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        problems.append(f"opset {opset}: per-channel DequantizeLinear (axis) needs opset >= 13")
    if max_opset is not None and opset > max_opset:
        problems.append(f"opset {opset}: the target's TensorRT parses ONNX opsets <= {max_opset}")

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        problems.append("no QuantizeLinear/DequantizeLinear: not an explicitly quantized model")
    for n in qdq:
        if len(n.input) < 3 or not n.input[2]:
            problems.append(f"{n.name}: no zero point (ONNX then means uint8; TensorRT needs int8, zero 0)")
            continue
        zero, scale = const(n.input[2]), const(n.input[1])
        if zero is None or scale is None:
            problems.append(f"{n.name}: scale and zero point must be constant initializers")
            continue
        if zero.dtype != np.int8:
            problems.append(f"{n.name}: zero point is {zero.dtype}, TensorRT needs int8")
        if np.any(zero != 0):
            problems.append(f"{n.name}: zero point {zero.ravel()[:4].tolist()} is not 0 (TensorRT is symmetric)")
        if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
            problems.append(f"{n.name}: scale must be positive and finite")
        if zero.shape != scale.shape:
            problems.append(f"{n.name}: scale and zero point shapes differ")
    for n in graph.node:
        if n.op_type == "QuantizeLinear":
            if const(n.input[1]) is not None and const(n.input[1]).size != 1:
                problems.append(f"{n.name}: activation scale is per-channel; TensorRT quantizes activations per tensor")
            for c in consumers.get(n.output[0], []):
                if c.op_type != "DequantizeLinear":
                    problems.append(f"{n.name}: feeds {c.op_type} {c.name}, not a DequantizeLinear")
                elif list(c.input[1:3]) != list(n.input[1:3]):
                    same = all(np.array_equal(const(a), const(b)) for a, b in zip(c.input[1:3], n.input[1:3]))
                    if not same:
                        problems.append(f"{n.name} -> {c.name}: Q and DQ scales differ")
        elif n.op_type == "DequantizeLinear":
            src = n.input[0]
            if src in inits:
                w = const(src)
                if w.dtype != np.int8:
                    problems.append(f"{n.name}: quantized weights are {w.dtype}, not int8")
                elif w.size and (w.min() < -WEIGHT_MAX or w.max() > WEIGHT_MAX):
                    problems.append(f"{n.name}: int8 weights outside [-127, 127] (TensorRT's weight range)")
            elif producer.get(src) is None or producer[src].op_type != "QuantizeLinear":
                problems.append(f"{n.name}: dequantizes {src}, which no QuantizeLinear made")
    for n in graph.node:
        if n.op_type not in WEIGHTED:
            continue
        what = f"{n.op_type} {n.name}"
        data = producer.get(n.input[0])
        if n.name in float_layers:
            wsrc = producer.get(n.input[1]) if len(n.input) > 1 else None
            if (data is not None and data.op_type == "DequantizeLinear") or \
                    (wsrc is not None and wsrc.op_type == "DequantizeLinear"):
                problems.append(f"{what}: kept in float, but its input or weights are still quantized")
            continue
        if data is None or data.op_type != "DequantizeLinear" or n.input[0] in inits:
            problems.append(f"{what}: data input {n.input[0]} has no Q/DQ (runs in float)")
        wdq = producer.get(n.input[1]) if len(n.input) > 1 else None
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            problems.append(f"{what}: weights are not INT8 constants behind a DequantizeLinear")
        else:
            w = const(wdq.input[0])
            scale = const(wdq.input[1])
            axis = next((helper.get_attribute_value(a) for a in wdq.attribute if a.name == "axis"), 1)
            if scale is None or scale.ndim != 1 or scale.size != w.shape[0] or axis != 0:
                problems.append(f"{what}: weights must be per output channel (axis 0, {w.shape[0]} scales), "
                                f"got axis {axis}, {None if scale is None else scale.size} scale(s)")
        if len(n.input) > 2 and n.input[2]:
            b = producer.get(n.input[2])
            if b is not None and b.op_type == "DequantizeLinear":
                problems.append(f"{what}: bias is quantized; TensorRT takes a float bias")
    for n, skip in residual_adds(graph, set(inits)):
        if producer.get(skip) is None or producer[skip].op_type != "DequantizeLinear":
            problems.append(f"Add {n.name}: residual (skip) input {skip} has no Q/DQ")
    for n in graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        src = producer.get(n.input[0])
        dq_consumers = [c for d in consumers.get(n.output[0], []) for c in consumers.get(d.output[0], [])]
        feeds_layer = any(c.op_type in WEIGHTED + ("Add",) for c in dq_consumers)
        if src is not None and src.op_type in WEIGHTED and not feeds_layer and not allow_activation_qdq:
            kinds = sorted({c.op_type for c in dq_consumers})
            problems.append(f"{n.name}: Q/DQ on the output of {src.op_type} {src.name} feeding only {kinds}: "
                            f"breaks TensorRT's {src.op_type}+activation fusion")
        if src is not None and src.op_type == "Sigmoid" and not allow_activation_qdq:
            if any(_is_swish(c, producer) for c in dq_consumers) or \
                    any(_is_swish(c, producer) for c in consumers.get(n.input[0], []) if c is not n):
                problems.append(f"{n.name}: Q/DQ inside swish (on its sigmoid)")
    for out in graph.output:
        p = producer.get(out.name)
        if p is not None and p.op_type == "DequantizeLinear":
            problems.append(f"output {out.name} is quantized: logits should leave in float")
    return problems


def check_tensorrt_rules(model: onnx.ModelProto, where: str = "QDQ model", **kwargs) -> dict:
    """Raise QDQRuleError listing every violation; return a summary when the model follows the rules."""
    problems = tensorrt_rule_violations(model, **kwargs)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise QDQRuleError(f"{where} breaks TensorRT's explicit-quantization rules: {shown}")
    graph = model.graph
    q = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dq_w = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in
            {i.name for i in graph.initializer}]
    return {"passed": True, "activation_qdq_pairs": len(q), "int8_weight_tensors": len(dq_w),
            "zero_points": "all 0 (int8)", "rules": RULES}


RULES = [
    "every Q/DQ zero point is int8 and 0 (symmetric)",
    "activation scales per tensor; weight scales per output channel (axis 0)",
    "weights are int8 constants in [-127, 127] behind a DequantizeLinear; bias stays float",
    "every Conv/Gemm data input comes through a Q/DQ pair",
    "every residual Add has its skip input through a Q/DQ pair",
    "no Q/DQ between a Conv/Gemm and its activation, none inside swish",
    "each QuantizeLinear feeds only DequantizeLinear nodes with its own scale and zero point",
    "logits leave in float; opset >= 13 and within the target TensorRT's parser",
    "layers the --max-drop fallback kept in float read float weights and an unquantized input",
]
