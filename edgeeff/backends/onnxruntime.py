"""ONNX Runtime backend: INT8 QDQ ONNX for `--target onnx`, and the runner for any .onnx file.

Quantization is ONNX Runtime's own static quantizer (QDQ format, per-channel symmetric INT8
weights) fed edgeeff's calibration images; what edgeeff adds is the measured choice of settings
(see docs/quantization.md) and the calibration recipe from calib/*.toml.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..data.preprocess import PreprocessSpec
from ..errors import MissingBackendError, UserError

EXTRA = "onnx"
SUFFIXES = (".onnx",)
RECIPE_METHODS = ("minmax", "percentile", "mse", "entropy", "distribution")
# --optimize: the searched activation ranges replace the recipe's for the tensors they match
# (quant/tensor_names.py); with rounding, quantizes job.int8_onnx, whose weights ORT's per-channel
# rule (max|w| / 127) rounds to exactly the learned integers (quant/optimise.py)
OPTIMIZE_MODES = ("ranges", "refine", "rounding")


def available() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        raise MissingBackendError("the onnx target needs ONNX Runtime: pip install 'edgeeff[onnx]'") from None


def version() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def session(path: Path | bytes, threads: int, profile: bool = False, optimised_path: Path | None = None):
    """An ONNX Runtime CPU session with the settings every edgeeff measurement uses (a model file,
    or a serialized model for the in-memory variants of the sensitivity analysis). `profile` turns on
    ONNX Runtime's profiler and `optimised_path` saves the graph it runs (scripts/profile_ort.py)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_profiling = profile
    if optimised_path is not None:
        options.optimized_model_filepath = str(optimised_path)
    try:
        source = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise UserError(f"{path}: ONNX Runtime cannot load it ({type(err).__name__}); "
                        f"is it a complete .onnx model file?") from None


class OrtRunner:
    """Runs an .onnx classifier in ONNX Runtime on the CPU."""

    def __init__(self, path: Path | bytes, threads: int, spec: PreprocessSpec):
        self.session = session(path, threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.runtime = version()
        # A fixed (numeric) batch dimension means feeding one image at a time.
        self.max_batch = 64 if not isinstance(inp.shape[0], int) else max(1, inp.shape[0])
        dtype = "uint8" if inp.type == "tensor(uint8)" else "float32"
        self.spec = spec.with_layout(spec.layout, dtype)

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: inputs})[0]


def open_runner(path: Path, threads: int, spec: PreprocessSpec) -> OrtRunner:
    return OrtRunner(path, threads, spec)


def inspect_input(path: Path) -> dict:
    """Layout, dtype and size of a foreign model's input, for `edgeeff eval` without a manifest."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf DecodeError and friends
        raise UserError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None
    inp = model.graph.input[0]
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    layout = "NHWC" if len(dims) == 4 and dims[3] == 3 else "NCHW"
    resolution = dims[1] if layout == "NHWC" else dims[2] if len(dims) == 4 else None
    return {"layout": layout, "resolution": resolution if isinstance(resolution, int) else None,
            "num_outputs": out_dims[-1] if out_dims else None}


class _BatchReader:
    """ONNX Runtime CalibrationDataReader over preprocessed calibration inputs, in batches."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch: int):
        self.batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
        self.input_name = input_name
        self.start, self.end = 0, len(self.batches)

    def __len__(self):
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int):
        self.start, self.end = start_index, min(end_index, len(self.batches))

    def get_next(self):
        if self.start >= self.end:
            return None
        self.start += 1
        return {self.input_name: self.batches[self.start - 1]}

    def rewind(self):
        self.start = 0


CALIBRATION_METHODS = {"entropy": "Entropy", "distribution": "Distribution"}  # ORT's own calibrators
QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}


def quantize(fp32_path: Path, out_path: Path, calib_inputs: np.ndarray, recipe: dict, quant: dict,
             nodes_to_exclude: list[str] | None = None, quiet: bool = False,
             weights_path: Path | None = None, range_overrides=None) -> dict:
    """Static QDQ quantization of an FP32 ONNX with ONNX Runtime's quantizer.

    `recipe` is a calibration recipe (calib/*.toml); `quant` the target's quantization settings
    (activation/weight types, per-channel). minmax/percentile/mse ranges come from edgeeff's own
    calibration (edgeeff/quant/calibration.py, cached) and reach ONNX Runtime through its calibration
    cache file; entropy/distribution use ONNX Runtime's calibrators. `weights_path`: the same graph
    with optimised weights (--optimize), quantized instead; bias correction still aims at fp32_path.
    `range_overrides(graph) -> ({tensor: (low, high)}, info)`: ranges that replace the recipe's
    for those tensors (the optimisation's searched ranges; edgeeff's own recipes only).
    Returns what was done.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    from ..quant.calibration import (
        HISTOGRAM_METHODS,
        OWN_METHODS,
        activation_floors,
        cached_stats,
        elementwise_readers,
        tensor_ranges,
    )

    method = recipe["method"]
    symmetric_activations = bool(quant.get("activation_symmetric", False))
    extra = {"ActivationSymmetric": symmetric_activations,
             "WeightSymmetric": True}  # symmetric per-channel INT8 weights: what INT8 kernels expect
    if method not in OWN_METHODS:
        # Calibrate one batch at a time so memory stays flat however many images there are.
        extra["CalibStridedMinMax"] = 1
        if method in ("percentile", "entropy", "distribution"):
            extra["CalibNumBins"] = int(recipe.get("num_bins", 128))
        if method == "entropy":
            extra["CalibNumQuantizedBins"] = int(recipe.get("num_quantized_bins", 128))
    extra.update(quant.get("extra_options", {}))
    details = {"quantizer": version(), "format": "QDQ", "per_channel": bool(quant.get("per_channel", True)),
               "activations": quant.get("activations", "uint8"), "weights": quant.get("weights", "int8"),
               "calibration": method}

    with tempfile.TemporaryDirectory(prefix="edgeeff-ort-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        details["global_average_pools"] = prepare_for_quantizer(weights_path or fp32_path, prepared)
        reference = prepared  # the float graph bias correction aims at: the FP32 model's own
        if weights_path is not None:
            reference = Path(tmp) / "reference.onnx"
            prepare_for_quantizer(fp32_path, reference)
        reader, cache_file, calibrate_method = None, None, CALIBRATION_METHODS.get(method, "MinMax")
        if method in OWN_METHODS:
            stats, hit = cached_stats(prepared, calib_inputs, int(recipe.get("batch", 10)), quiet=quiet,
                                      histograms=method in HISTOGRAM_METHODS)
            graph = onnx.load(str(prepared), load_external_data=False)
            readers = elementwise_readers(graph)  # swish / sigmoid / hard-swish inputs (activation_aware)
            floors = activation_floors(graph)  # hard-swish inputs: exact below -3
            ranges = tensor_ranges(stats, recipe, symmetric=symmetric_activations, readers=readers, floors=floors)
            if range_overrides is not None:
                searched, details["searched_ranges"] = range_overrides(graph)
                ranges.update({name: r for name, r in searched.items() if name in ranges})
            ranges = {name: (np.float32(low), np.float32(high))  # ORT wants float32 scalars
                      for name, (low, high) in ranges.items()}
            if floors:
                details["range_floors"] = {"tensors": len(floors), "why": "hard-swish inputs: exact below -3"}
            cache_file = Path(tmp) / "ranges.json"
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache_file)
            calibrate_method = "MinMax"
            details["calibration_stats_cached"] = hit
            if recipe.get("activation_aware"):
                details["activation_aware_tensors"] = sum(1 for name in readers if name in ranges)
        else:
            if range_overrides is not None:
                details["searched_ranges"] = f"not applied: {method} is ONNX Runtime's own calibrator"
            reader = _BatchReader(_input_name(prepared), calib_inputs, int(recipe.get("batch", 10)))
        # ORT prints a line per calibration batch; the progress we show is our own.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared), str(out_path), reader,
                quant_format=QuantFormat.QDQ,
                per_channel=bool(quant.get("per_channel", True)),
                activation_type=getattr(QuantType, QUANT_TYPES[quant.get("activations", "uint8")]),
                weight_type=getattr(QuantType, QUANT_TYPES[quant.get("weights", "int8")]),
                calibrate_method=getattr(CalibrationMethod, calibrate_method),
                nodes_to_exclude=nodes_to_exclude or [],
                extra_options=extra,
                calibration_cache_path=str(cache_file) if cache_file else None,
            )
        from ..quant import bias_correction

        optimised = range_overrides is not None
        if bias_correction.wanted(quant, optimised):
            qdq = onnx.load(str(out_path))
            details["bias_correction"] = bias_correction.correct_biases(qdq, onnx.load(str(reference)), calib_inputs,
                                                                        quiet=quiet)
            onnx.save(qdq, str(out_path))
        if skipped := bias_correction.skipped_reason(quant, optimised):
            details["bias_correction_skipped"] = skipped
    if quant.get("float_output", True):
        details["float_output"] = dequantize_outputs(out_path)
    details["extra_options"] = {k: v for k, v in extra.items() if k != "CalibStridedMinMax"}
    return details


def searched_ranges(job, calib_inputs: np.ndarray):
    """--optimize's searched activation ranges as a `range_overrides(graph)` for an ONNX graph
    exported from job.optimised_model (tensors found by value, quant/tensor_names.py), or None."""
    if job.optimisation is None or not job.optimisation.get("ranges"):
        return None
    from ..quant.tensor_names import onnx_tensors_for_points, rename_ranges

    return lambda graph: rename_ranges(job.optimisation["ranges"],
                                       onnx_tensors_for_points(job.optimised_model, graph, calib_inputs[:2]))


def dequantize_outputs(path: Path) -> list[str]:
    """Drop the Q/DQ pair on each graph output, so logits leave the model in float.

    Quantizing the logits to 8 bits makes close classes tie at the same integer and flips the
    argmax: measured on Lite0, top-1 agreement 97.85% with quantized logits, 98.15% without,
    at the same size and speed (the classifier's weights and input stay INT8).
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    changed = []
    for output in graph.output:
        dq = producer.get(output.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = producer.get(q.input[0])
        consumers = [n for n in graph.node for i in n.input if i == q.input[0] and n is not q]
        if source is None or consumers:
            continue  # the float tensor feeds something else too: leave the graph alone
        source.output[list(source.output).index(q.input[0])] = output.name
        graph.node.remove(dq)
        graph.node.remove(q)
        changed.append(output.name)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:  # the pair's scale/zero point
        graph.initializer.remove(init)
    onnx.save(model, str(path))
    return changed


def spatial_means_as_global_pools(model) -> int:
    """Replace each ReduceMean over the two spatial axes (squeeze-excitation's squeeze, the head's
    pooling) by GlobalAveragePool, the same function. Why: ONNX Runtime fuses DQ -> GlobalAveragePool
    -> Q into QLinearGlobalAveragePool, an integer kernel that runs in its channels-last INT8 graph,
    while DQ -> ReduceMean -> Q stays a float island: every SE block then dequantizes its whole
    feature map and reduces it over strided channels-last axes. Measured on the B0 test model (ORT
    profiler, 2 threads): ReduceMean + its DequantizeLinear/QuantizeLinear were 17% of the INT8
    model's time, QLinearGlobalAveragePool 4% (docs/benchmarks.md). The node keeps its name, so the
    float-fallback maps (quant/layers.py) still match. A mean with keepdims=0 (the head) becomes
    GlobalAveragePool + Flatten. Returns how many were replaced."""
    from onnx import helper, numpy_helper, shape_inference

    graph = model.graph
    ranks = _ranks(shape_inference.infer_shapes(model).graph)  # a mean over axes 2, 3 of 4-D only
    initializers = {init.name: init for init in graph.initializer}
    replaced = 0
    for node in list(graph.node):
        if node.op_type != "ReduceMean":
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attributes.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in initializers:
            axes = numpy_helper.to_array(initializers[node.input[1]]).tolist()
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3] or ranks.get(node.input[0]) != 4:
            continue
        index = list(graph.node).index(node)
        graph.node.remove(node)
        if attributes.get("keepdims", 1):
            graph.node.insert(index, helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output),
                                                      name=node.name))
        else:
            pooled = node.output[0] + "_pooled"
            graph.node.insert(index, helper.make_node("Flatten", [pooled], list(node.output), name=node.name + "_flatten",
                                                      axis=1))
            graph.node.insert(index, helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name))
        replaced += 1
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:  # the axes constants
        graph.initializer.remove(init)
    return replaced


def _ranks(graph) -> dict[str, int]:
    return {value.name: len(value.type.tensor_type.shape.dim)
            for value in list(graph.value_info) + list(graph.input) + list(graph.output)
            if value.type.tensor_type.HasField("shape")}


def _rewrite(path: Path, change) -> int:
    """Apply `change(model) -> count` to the ONNX file at `path` in place; returns the count."""
    import onnx

    model = onnx.load(str(path))
    count = change(model)
    if count:
        onnx.save(model, str(path))
    return count


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def build(job) -> list:
    """`--target onnx`: the FP32 ONNX as exported, and the INT8 QDQ ONNX."""
    from .artifact import Artifact

    fp32 = job.workdir / "model_fp32.onnx"
    shutil.copyfile(job.fp32_onnx, fp32)
    int8 = job.workdir / "model_int8.onnx"
    spec = job.spec.with_layout("NCHW", "float32")
    calib_inputs = spec.to_model_input(job.calibration.crops)
    details = quantize(fp32, int8, calib_inputs, job.recipe, job.target.quantization, quiet=job.quiet,
                       weights_path=job.int8_onnx, range_overrides=searched_ranges(job, calib_inputs))
    if job.optimisation is not None:
        details["optimisation"] = job.optimisation
    return [
        Artifact(file=fp32.name, format="onnx", precision="fp32", spec=spec),
        Artifact(file=int8.name, format="onnx", precision="int8", spec=spec, quantization=details),
    ]


class QdqFloatVariants:
    """The INT8 QDQ model with chosen layers kept in float, in memory (edgeeff/quant/layers.py): what the
    sensitivity analysis and the --max-drop fallback run. `fp32` is the float graph the QDQ model
    was made from, with the same node and weight names."""

    def __init__(self, int8_path: Path, fp32, spec: PreprocessSpec, threads: int, backend: str,
                 needed_by: str = "neighbours", check=None):
        import onnx

        from ..quant.layers import find_layers

        self.int8_path = int8_path
        self.int8 = onnx.load(str(int8_path))
        self.fp32 = fp32
        self.layers = find_layers(fp32)
        self.spec, self.threads, self.backend, self.needed_by = spec, threads, backend, needed_by
        self.artifact = int8_path.name
        self.check = check  # called on the model save() writes (TensorRT: its Q/DQ rules)

    def model(self, float_layers: list[str]):
        from ..quant.layers import keep_float

        return keep_float(self.int8, self.fp32, float_layers, self.needed_by)

    def runner(self, float_layers: list[str]) -> OrtRunner:
        return OrtRunner(self.model(float_layers).SerializeToString(), self.threads, self.spec)

    def save(self, float_layers: list[str]) -> None:
        """Rewrite the artifact with these layers in float."""
        import onnx

        model = self.model(float_layers)
        if self.check is not None:
            self.check(model, float_layers)
        onnx.save(model, str(self.int8_path))


def prepare_for_quantizer(fp32_path: Path, out_path: Path) -> int:
    """Write the float graph ONNX Runtime's quantizer works on: shape inference + ORT's graph
    optimisations (BN folding, constant folding) first, as ORT recommends, so that quantization
    sees the graph the runtime will actually run; then the spatial means as GlobalAveragePool.
    Deterministic: the same file gives the same bytes (the calibration statistics are cached by
    them, and the jetson targets find the onnx target's there). Returns the pools rewritten."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return _rewrite(out_path, spatial_means_as_global_pools)


def prepared_fp32(fp32_path: Path):
    """The float graph ONNX Runtime's quantizer worked on (prepare_for_quantizer), in memory."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgeeff-ort-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        prepare_for_quantizer(fp32_path, prepared)
        return onnx.load(str(prepared))


def float_variants(workdir: Path, artifacts: list, threads: int) -> QdqFloatVariants:
    int8 = next(a for a in artifacts if a.precision == "int8")
    return QdqFloatVariants(workdir / int8.file, prepared_fp32(workdir / "model_fp32.onnx"), int8.spec, threads,
                            "onnxruntime")
