"""LiteRT (TFLite) backend: `.tflite` for Raspberry Pi and phones, without TensorFlow.

Conversion (measured against the TensorFlow route in docs/quantization.md):
  float32  litert-torch converts the PyTorch model itself, wrapped to take NHWC input (the
           permute is folded away by the converter: no TRANSPOSE op is left in the graph).
  int8     ai-edge-quantizer static INT8 on that float file: per-channel symmetric INT8
           weights, per-tensor asymmetric INT8 activations, INT8 input and output tensors
           (full-integer: no float op, no QUANTIZE/DEQUANTIZE inside). Calibration keeps
           every image's min/max per tensor and takes a percentile across images
           (`sample_percentile` recipe: 99.5th; swish models get the median, `sample_median`,
           via the profile's calibration_by_activation), instead of the quantizer's default
           moving average, which only honours the last ~20 images.
  uint8 IO when the target profile asks for it: integer QUANTIZE ops (int8 <-> uint8, same
           scale, zero point + 128) at the graph's input and output, what TensorFlow's
           converter does for inference_input_type=uint8.
  fp16     ai-edge-quantizer's float_casting recipe (FP16 weights, float compute) for GPU
           delegates on phones.
Evaluation runs every file in the LiteRT interpreter, with the input quantized exactly as a
device does: normalised float -> round(x / scale) + zero_point, clipped to the tensor's dtype.
"""

from __future__ import annotations

import collections
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..choices import IO_DTYPES
from ..data.preprocess import PreprocessSpec
from ..device.device_preprocess import from_output_tensor, takes_raw_pixels, to_input_tensor
from ..errors import MissingBackendError, UserError
from ..profiles import quantization_for_model
from ..progress import progress
from ..quant.calibration import HARD_SWISH_FLOOR
from ..util import captured_output as _captured_output
from ..util import interpreter_keeping_every_tensor
from .tflite_flatbuffer import builtin_code as _builtin
from .tflite_flatbuffer import load_inlined as _load_inlined
from .tflite_flatbuffer import save as _save
from .tflite_flatbuffer import schema as _schema

if TYPE_CHECKING:
    from .tflite_bias_correction import BiasCorrection

EXTRA = "tflite"
SUFFIXES = (".tflite",)
INSTALL = "pip install 'edgeeff[tflite]'"
# Calibration methods this backend implements (calib/*.toml `method`).
RECIPE_METHODS = ("sample_percentile", "minmax", "percentile", "mse")
NEEDS_ONNX = False  # converts the PyTorch model directly: the pipeline skips its ONNX export


def available() -> None:
    """The interpreter is all `edgeeff eval` needs; build() also needs the converters."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError:
        raise MissingBackendError(f"the tflite targets need LiteRT: {INSTALL}") from None


def check_job(target, recipe: dict) -> None:
    """Everything build() will need, checked before any heavy work (called by the pipeline)."""
    try:
        with _captured_output():  # importing them prints C++ and torchao chatter
            import ai_edge_quantizer  # noqa: F401
            import litert_torch  # noqa: F401
    except ImportError:
        raise MissingBackendError(f"--target {target.name} converts with litert-torch and ai-edge-quantizer: "
                                  f"{INSTALL}") from None
    if target.input_dtype not in IO_DTYPES:
        raise UserError(f"targets/{target.name}.toml: input_dtype {target.input_dtype!r} must be int8 or uint8")


def version() -> str:
    from importlib import metadata

    return f"ai-edge-litert {metadata.version('ai-edge-litert')}"


# ---------------------------------------------------------------- conversion

# How a phone file normalises its input (the report's preprocess.normalisation_in_model.how)
NORMALISATION_IN_GRAPH = "a 1x1 depthwise conv at the input: (x - mean) / std per channel"


def input_normalisation(mean, std):
    """(x - mean) / std per channel as one 1x1 depthwise conv (weight 1/std, bias -mean/std): in the
    INT8 file a single DEPTHWISE_CONV_2D whose one weight per channel INT8 holds exactly (per-channel
    scale), where a SUB and a MUL would each round the image once more."""
    import torch

    conv = torch.nn.Conv2d(3, 3, 1, groups=3, bias=True)
    with torch.no_grad():
        std_t = torch.tensor(std, dtype=torch.float32)
        conv.weight.copy_((1.0 / std_t).reshape(3, 1, 1, 1))
        conv.bias.copy_(-torch.tensor(mean, dtype=torch.float32) / std_t)
    return conv


def float_conversion_key(model, resolution: int, normalise=None) -> str:
    """What convert_float's bytes depend on: the module's architecture and weights, the input size,
    the in-graph normalisation and the converter's version (it is deterministic: the same module
    converts to the same bytes, in this process or another)."""
    from importlib import metadata

    from ..cache import content_key

    return content_key("litert float", model.describe(), model.state_dict_digest(), resolution,
                       normalise, metadata.version("litert-torch"))


def start_float_conversion(model, resolution: int, normalise=None) -> None:
    """Begin convert_float(model, ...) in a background process (edgeeff/background.py), for a
    target of the same command that comes later: its convert_float then copies the file."""
    import torch

    from .. import background

    key = float_conversion_key(model, resolution, normalise)
    if background.started(key):
        return
    folder = background.workspace()
    module_file = folder / f"{key}.pt"
    torch.save(model, module_file)  # the whole module: the worker needs no builder settings
    args = [str(module_file), str(folder / f"{key}.tflite"), str(resolution)]
    if normalise is not None:
        args += [",".join(map(repr, normalise[0])), ",".join(map(repr, normalise[1]))]
    background.start(key, f"{__name__}:_background_conversion", args, folder / f"{key}.tflite")


def convert_float(model, resolution: int, path: Path, normalise=None) -> Path:
    """PyTorch module (NCHW) -> float32 .tflite with an NHWC input of (1, res, res, 3).
    `normalise=(mean, std)`: the file takes pixel / 255 and normalises inside its graph.
    A conversion of the same module begun earlier in the background (start_float_conversion) is
    waited for and copied; if it failed, the conversion runs here (as it does in the worker, whose
    process started no job). The tensor names in the file hold this function's qualified name: the
    worker calls it from this module, not as __main__."""
    import shutil

    from .. import background

    done = None
    if background.any_started() and hasattr(model, "state_dict_digest"):
        done = background.result(float_conversion_key(model, resolution, normalise))
    if done is not None:
        shutil.copyfile(done, path)
        return path
    import litert_torch
    import torch

    class NHWC(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.normalise = input_normalisation(*normalise) if normalise is not None else torch.nn.Identity()

        def forward(self, x):
            x = self.normalise(x.permute(0, 3, 1, 2))
            inner = self.inner
            if not all(hasattr(inner, a) for a in ("features", "dropout", "classifier")):
                return inner(x)
            # edgeeff's EfficientNet, with the global pool written in NHWC: the converter then
            # cancels the layout transposes instead of leaving a TRANSPOSE before MEAN
            # (x.mean((2, 3)) on the NCHW view keeps one). Same arithmetic as inner.forward.
            pooled = inner.features(x).permute(0, 2, 3, 1).mean((1, 2))
            return inner.classifier(inner.dropout(pooled))

    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    litert_torch.convert(NHWC(model).eval(), (torch.zeros(1, resolution, resolution, 3),)).export(str(path))
    return path


def _keep_every_sample(qsv: dict, new: dict) -> dict:
    """Calibrator update: keep each image's min/max (ai-edge-quantizer's default is an EMA).

    The calibrator stores the first image's statistics as they are and calls this from the
    second image on."""
    if not qsv:
        return new
    all_min = qsv["all_min"] if "all_min" in qsv else [qsv["min"]]
    all_max = qsv["all_max"] if "all_max" in qsv else [qsv["max"]]
    all_min.append(new["min"])
    all_max.append(new["max"])
    return {"min": np.minimum(qsv["min"], new["min"]), "max": np.maximum(qsv["max"], new["max"]),
            "all_min": all_min, "all_max": all_max}


def reduce_ranges(qsvs: dict, percentile: float) -> dict:
    """Per tensor: the `percentile`-th percentile over images of each image's max (and the
    (100 - percentile)-th of each image's min). 100 is the global min/max. Order independent."""
    ranges = {}
    for name, qsv in qsvs.items():
        if "all_min" not in qsv:
            ranges[name] = {"min": qsv["min"], "max": qsv["max"]}
            continue
        shape = np.shape(qsv["min"])
        lows, highs = np.stack(qsv["all_min"]), np.stack(qsv["all_max"])
        ranges[name] = {"min": np.percentile(lows, 100 - percentile, axis=0).astype(np.float32).reshape(shape),
                        "max": np.percentile(highs, percentile, axis=0).astype(np.float32).reshape(shape)}
    return ranges




def hard_swish_inputs(float_path: Path) -> set[str]:
    """Names of the tensors read only by HARD_SWISH ops."""
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(Path(float_path).read_bytes(), 0)
    readers: dict[int, set[int]] = collections.defaultdict(set)
    for graph in model.subgraphs:
        for op in graph.operators:
            code = _builtin(model.operatorCodes[op.opcodeIndex])
            for index in op.inputs if op.inputs is not None else []:
                readers[index].add(code)
        graph_outputs = set(graph.outputs if graph.outputs is not None else [])
        return {graph.tensors[i].name.decode() for i, codes in readers.items()
                if codes == {schema.BuiltinOperator.HARD_SWISH} and i not in graph_outputs}
    return set()


def floor_hard_swish_inputs(ranges: dict, hard_swish: set[str]) -> dict:
    """Raise the low end of every hard-swish input's range to -3, below which it outputs exactly 0.

    A range that follows the raw tensor spends most of the 8-bit grid on values hard-swish maps
    to 0 (-300 to -30 on the hard-swish B0 variant): see calibration.activation_floors, its ONNX
    twin, and docs/variants.md for the measurement.
    """
    for name in hard_swish & set(ranges):
        low = np.asarray(ranges[name]["min"])
        ranges[name] = {**ranges[name], "min": np.maximum(low, HARD_SWISH_FLOOR).astype(low.dtype)}
    return ranges


def histogram_ranges(float_path: Path, calib_inputs: np.ndarray, ranges: dict, recipe: dict,
                     hard_swish: set[str], threads: int = 2, quiet: bool = False) -> dict:
    """edgeeff's own range methods (calibration.py: percentile, mse) for the .tflite's activations.

    `ranges` are the calibrator's global min/max per tensor; a second pass runs the float model
    in the LiteRT interpreter with every tensor kept and histograms each activation over that
    span (the same histograms and range rules as the ONNX backends). The graph's inputs and
    outputs keep their full range: the input's is the preprocessing's, and clipping the logits'
    top tail would tie the very classes top-1 is about. `hard_swish`: hard_swish_inputs(), floored
    at -3 in the range rules.
    """
    from ..quant.calibration import NUM_BINS, ActivationStats, histogram_counts, tensor_ranges

    it, index = interpreter_keeping_every_tensor(float_path, threads)
    boundary = {d["name"] for d in it.get_input_details() + it.get_output_details()}
    names = [n for n in ranges if n in index and n not in boundary
             and np.size(ranges[n]["min"]) == 1 and float(np.max(ranges[n]["max"])) > float(np.min(ranges[n]["min"]))]
    lo = np.array([min(float(np.min(ranges[n]["min"])), 0.0) for n in names])
    hi = np.array([max(float(np.max(ranges[n]["max"])), 0.0) for n in names])
    hist = np.zeros((len(names), NUM_BINS), np.int64)
    feed = it.get_input_details()[0]["index"]
    for x in progress(list(calib_inputs), "calibration histograms (LiteRT)", "image", quiet):
        it.set_tensor(feed, x[None].astype(np.float32))
        it.invoke()
        for t, name in enumerate(names):
            hist[t] += histogram_counts(it.get_tensor(index[name]), lo[t], hi[t])
    chosen = tensor_ranges(ActivationStats(names, lo, hi, hist), recipe,
                           floors={name: HARD_SWISH_FLOOR for name in hard_swish})
    out = dict(ranges)
    for name, (low, high) in chosen.items():
        out[name] = _with_range(ranges[name], low, high)
    return out


def _with_range(entry: dict, low: float, high: float) -> dict:
    """An ai-edge-quantizer range entry with its min/max set to (low, high), shapes kept."""
    shape = np.shape(entry["min"])
    return {**entry, "min": np.full(shape, low, np.float32), "max": np.full(shape, high, np.float32)}


# --optimize ranges: the searched ranges replace the recipe's for the tensors they match (by value,
# quant/tensor_names.py); LOGISTIC outputs keep TFLite's fixed scale 1/256, zero point -128.
# --optimize rounding: the same, and the INT8 file is quantized from the learned weights (build()).
OPTIMIZE_MODES = ("ranges", "refine", "rounding")
SIMULATION = {"fixed_ranges": {".se.gate": (0.0, 255 / 256)}}


@dataclass
class Int8Calibration:
    """What the calibration of one float .tflite gave: quantize_int8 writes the INT8 file from it, and
    the a16w8 variants (A16w8Variants) re-quantize from it without calibrating again."""

    ranges: dict  # per tensor, the range the INT8 file uses (recipe, histograms, searched ranges, floors)
    extremes: dict  # per tensor, the global min/max over the calibration images
    info: dict  # the report's description of the ranges


def image_statistics(float_path: Path, calib_inputs: np.ndarray, threads: int = 2, quiet: bool = False,
                     batch: int = 25) -> dict:
    """Per activation tensor, each calibration image's min and max (`_keep_every_sample`'s
    {"min", "max", "all_min", "all_max"}): what ai-edge-quantizer's calibrator gives with that update.

    The calibrator itself runs on the first image only: it decides which tensors its INT8 recipe
    takes statistics of, and their shapes. For the others the same statistics (min and max over
    the whole tensor: every one is per-tensor) are read in place from an interpreter built as the
    calibrator builds its own, so the values are the same to the bit (tests/test_tflite.py). The
    calibrator copies every tensor of the model per image and walks its ops in Python: 50 ms per
    Lite0 image against 9 ms here, so 300 images take ~3 s instead of ~15 s; and no copies (a B7
    image's tensors are several GB).
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import tfl_interpreter_utils

    signatures = Interpreter(model_path=str(float_path)).get_signature_list()
    key = next(iter(signatures))
    input_name = signatures[key]["inputs"][0]
    quantizer = _int8_quantizer(float_path)
    with _captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "experimental_preserve_all_tensors ... debugging"
        cal = calibrator.Calibrator(quantizer._float_model_buffer, num_threads=threads,
                                    qsv_update_func=_keep_every_sample)
        # Each dataset must be a list: the calibrator calls len(list(dataset)) before iterating.
        cal.calibrate({key: [{input_name: calib_inputs[:1].astype(np.float32)}]}, quantizer._recipe_manager)
        qsvs = cal.get_model_qsvs()
        del cal  # its interpreter holds every tensor of an image
        it = tfl_interpreter_utils.create_tfl_interpreter(quantizer._float_model_buffer, num_threads=threads,
                                                          preserve_all_tensors=True)
    index = {d["name"]: d["index"] for d in it.get_tensor_details()}
    missing = [name for name in qsvs if name not in index]
    if missing:  # not a graph tensor of the main subgraph: the calibrator would be needed for these
        raise RuntimeError(f"{float_path}: calibration tensors not found in the interpreter: {missing[:3]}")
    if any(np.size(qsv["min"]) != 1 for qsv in qsvs.values()):
        raise RuntimeError(f"{float_path}: per-channel activation statistics are not supported")
    shapes = {name: np.shape(qsv["min"]) for name, qsv in qsvs.items()}
    feed = it.get_input_details()[0]["index"]
    rest = calib_inputs[1:]
    chunks = [rest[i:i + batch] for i in range(0, len(rest), batch)]
    for chunk in progress(chunks, "calibration (LiteRT)", "batch", quiet):
        for x in chunk:
            it.set_tensor(feed, x[None].astype(np.float32))
            it.invoke()
            for name, shape in shapes.items():
                view = it.tensor(index[name])()  # in place; released before the next invoke
                new = {"min": np.min(view).reshape(shape), "max": np.max(view).reshape(shape)}
                del view
                qsvs[name] = _keep_every_sample(qsvs[name], new)
    return qsvs


def calibrate_int8(float_path: Path, calib_inputs: np.ndarray, recipe: dict, threads: int = 2,
                   quiet: bool = False, batch: int = 25, range_overrides=None,
                   input_range: tuple[float, float] | None = None) -> Int8Calibration:
    """Each activation tensor's statistics on `calib_inputs` (float NHWC, preprocessed; ai-edge-quantizer's
    calibrator's, image_statistics) and its range chosen by the recipe. `range_overrides(float_path) -> ({tensor: (low, high)},
    info)`: ranges replacing the recipe's (--optimize ranges). `input_range`: the graph input's
    range, fixed (a file taking pixel / 255 gets [0, 1]: its uint8 input is then the pixel byte)."""
    from ai_edge_litert.interpreter import Interpreter

    percentile = float(recipe.get("percentile", 99.5)) if recipe["method"] == "sample_percentile" else 100.0
    with warnings.catch_warnings():
        # "invalid value encountered in cast": the int32 bias overflow repaired by write_int8
        warnings.simplefilter("ignore", RuntimeWarning)
        qsvs = image_statistics(float_path, calib_inputs, threads, quiet, batch)
        ranges = reduce_ranges(qsvs, percentile)
    extremes = {name: {"min": qsv["min"], "max": qsv["max"]} for name, qsv in qsvs.items()}
    # The graph's input and output keep every calibration image's extremes: the input's range is the
    # preprocessing's, and a percentile of the logits' per-image maxima clips the confident images'
    # top score (Lite0 android: every logit above 14.5 read as 14.5, 0.6% of val saturated).
    interp = Interpreter(model_path=str(float_path))
    for detail in interp.get_input_details() + interp.get_output_details():
        if detail["name"] in extremes:
            ranges[detail["name"]] = {**ranges[detail["name"]], **extremes[detail["name"]]}
    hard_swish = hard_swish_inputs(float_path)
    if recipe["method"] in ("percentile", "mse"):
        ranges = histogram_ranges(float_path, calib_inputs, ranges, recipe, hard_swish, threads, quiet)
    searched_info = None
    if range_overrides is not None:
        searched, searched_info = range_overrides(float_path)
        for name, (low, high) in searched.items():
            if name in ranges and np.size(ranges[name]["min"]) == 1:
                ranges[name] = _with_range(ranges[name], low, high)
    if input_range is not None:
        name = interp.get_input_details()[0]["name"]
        ranges[name] = _with_range(ranges[name], *input_range)
    ranges = floor_hard_swish_inputs(ranges, hard_swish)
    info = {"calibration": recipe["method"], "calibration_images": int(len(calib_inputs))}
    if recipe["method"] in ("percentile", "mse"):
        info["range"] = "histogram over every activation (calibration.py); graph input/output min/max"
        if recipe["method"] == "percentile":
            info["percentile"] = float(recipe.get("percentile", 99.999))
    else:
        info["range_percentile_over_images"] = percentile
    if searched_info:
        info["searched_ranges"] = searched_info
    if hard_swish:
        info["hard_swish_inputs_floored_at"] = {"value": HARD_SWISH_FLOOR, "tensors": len(hard_swish)}
    return Int8Calibration(ranges, extremes, info)


def _int8_quantizer(float_path: Path):
    """ai-edge-quantizer with edgeeff's INT8 recipe: every supported op static INT8."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    quantizer = aeq.Quantizer(str(float_path))
    quantizer.add_static_config(
        regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8, weight_num_bits=8,  # asymmetric per-tensor INT8 activations
        weight_granularity=qtyping.QuantGranularity.CHANNELWISE,  # symmetric per-channel INT8 weights
        algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    return quantizer


def write_int8(float_path: Path, out_path: Path, calibration: Int8Calibration, a16w8_ops=(), graph=()) -> int:
    """Quantize the float file with `calibration`'s ranges and write it; returns how many INT32 bias
    channels were repaired. `a16w8_ops`: TfliteOps given int16 activations and int8 weights instead
    (a16w8_recipe; `graph`: every TfliteOp of the float file); nothing else changes."""
    quantizer = _int8_quantizer(float_path)
    ranges = a16w8_recipe(quantizer, graph, calibration, a16w8_ops) if a16w8_ops else calibration.ranges
    with _captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = quantizer.quantize(ranges, enable_progress_report=False)
        result.export_model(str(out_path), overwrite=True)
    return repair_bias_overflow(out_path, float_path)


def int8_details(calibration: Int8Calibration, repaired: int) -> dict:
    """The report's `quantization` of an INT8 file written by write_int8."""
    from importlib import metadata

    return {"quantizer": f"ai-edge-quantizer {metadata.version('ai-edge-quantizer')}",
            "converter": f"litert-torch {metadata.version('litert-torch')}",
            "weights": "int8", "per_channel": True, "weight_symmetric": True,
            "activations": "int8", "activation_symmetric": False,
            **{key: calibration.info[key] for key in ("calibration", "calibration_images")},
            "bias_overflow_channels_repaired": repaired, **calibration.info}


def quantize_int8(float_path: Path, out_path: Path, calib_inputs: np.ndarray, recipe: dict,
                  threads: int = 2, quiet: bool = False, batch: int = 25, range_overrides=None) -> dict:
    """Static full-integer INT8 with ai-edge-quantizer: calibrate_int8, then write_int8.
    `calib_inputs`: float NHWC, preprocessed. Returns the settings used (for the report)."""
    calibration = calibrate_int8(float_path, calib_inputs, recipe, threads, quiet, batch, range_overrides)
    return int8_details(calibration, write_int8(float_path, out_path, calibration))


def quantize_fp16(float_path: Path, out_path: Path) -> dict:
    """FP16 weights (float compute): half the size, for GPU delegates (phones)."""
    from ai_edge_quantizer import quantizer as aeq

    quantizer = aeq.Quantizer(str(float_path))
    quantizer.load_quantization_recipe([{
        "regex": ".*", "operation": "*", "algorithm_key": "float_casting",
        "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                      "compute_precision": "FLOAT", "explicit_dequantize": True, "skip_checks": False}}])
    with _captured_output():
        quantizer.quantize(enable_progress_report=False).export_model(str(out_path), overwrite=True)
    from importlib import metadata

    return {"quantizer": f"ai-edge-quantizer {metadata.version('ai-edge-quantizer')}",
            "weights": "fp16", "compute": "float32 on CPU, fp16 on GPU delegates"}


# ---------------------------------------------------------------- flatbuffer edits

def int8_io_to_uint8(src: Path, dst: Path) -> None:
    """Give an int8-IO model uint8 input and output: an integer QUANTIZE op on each end
    (int8 <-> uint8 with the same scale and zero point + 128: exact, no rounding)."""
    schema = _schema()
    model = _load_inlined(src)
    graph = model.subgraphs[0]
    quantize_op = next((i for i, oc in enumerate(model.operatorCodes)
                        if _builtin(oc) == schema.BuiltinOperator.QUANTIZE), None)
    if quantize_op is None:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
        code.version = 2  # int8 <-> uint8 requantization
        model.operatorCodes.append(code)
        quantize_op = len(model.operatorCodes) - 1

    def uint8_twin(index: int) -> int | None:
        src_tensor = graph.tensors[index]
        if src_tensor.type == schema.TensorType.FLOAT32 and index in list(graph.outputs):
            return None  # float logits (Int8Build.float_logits) stay float
        if src_tensor.type != schema.TensorType.INT8:
            raise ValueError(f"{src}: graph input/output {src_tensor.name!r} is not int8")
        tensor = schema.TensorT()
        tensor.shape = list(src_tensor.shape)
        if src_tensor.shapeSignature is not None:
            tensor.shapeSignature = list(src_tensor.shapeSignature)
        tensor.type = schema.TensorType.UINT8
        tensor.name = src_tensor.name  # the public name stays on the graph's boundary
        src_tensor.name = src_tensor.name + b"_int8"
        model.buffers.append(schema.BufferT())
        tensor.buffer = len(model.buffers) - 1
        quant = schema.QuantizationParametersT()
        quant.scale = list(src_tensor.quantization.scale)
        quant.zeroPoint = [int(z) + 128 for z in src_tensor.quantization.zeroPoint]
        tensor.quantization = quant
        graph.tensors.append(tensor)
        return len(graph.tensors) - 1

    def retarget(old: int, new: int, which: str) -> None:
        for sig in model.signatureDefs or []:
            for entry in getattr(sig, which):
                if entry.tensorIndex == old:
                    entry.tensorIndex = new

    graph.inputs = np.array(graph.inputs).copy()
    graph.outputs = np.array(graph.outputs).copy()
    for k, old in enumerate(list(graph.inputs)):
        new = uint8_twin(old)
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = quantize_op, [new], [old]
        graph.operators.insert(0, op)
        graph.inputs[k] = new
        retarget(old, new, "inputs")
    for k, old in enumerate(list(graph.outputs)):
        new = uint8_twin(old)
        if new is None:
            continue
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = quantize_op, [old], [new]
        graph.operators.append(op)
        graph.outputs[k] = new
        retarget(old, new, "outputs")
    _save(model, dst)


BIAS_TARGET = 2 ** 24  # |int32 bias| of a repaired channel: far from overflow, 7 significant digits
MIN_MULTIPLIER = 2.0 ** -31  # a requantization multiplier below this is flushed to zero by TFLite
BIAS_MULTIPLIER = 2.0 ** -24  # the multiplier a repaired int16-activation channel gets


def repair_bias_overflow(int8_path: Path, float_path: Path) -> int:
    """Fix the INT32 biases ai-edge-quantizer overflows (and the INT64 biases of a16w8 ops whose
    requantization underflows); returns how many channels were repaired.

    A bias is quantized with scale input_scale * weight_scale[c]. Trained EfficientNets have dead
    channels (BN gamma ~ 0: weights ~1e-10 after folding, output = the bias): their weight scale
    is ~1e-12, bias / scale does not fit in int32 and the quantizer writes INT32_MIN, which turns
    a constant activation into a huge negative one (Lite0: 87 channels in 23 layers). TensorFlow's
    converter handles this by enlarging the channel's weight scale until the bias fits; so does
    this: weight scale such that |bias| quantizes to ~2^24, the channel's int8 weights
    requantized with it (they round to ~0, as they are), bias requantized exactly. With int16
    activations the weight scale is raised until the multiplier is BIAS_MULTIPLIER.
    """
    schema = _schema()
    model, ref = _load_inlined(int8_path), _load_inlined(float_path)
    graph, ref_graph = model.subgraphs[0], ref.subgraphs[0]
    by_name = collections.Counter(t.name for t in ref_graph.tensors)
    ref_tensors = {t.name: t for t in ref_graph.tensors if by_name[t.name] == 1}
    repaired = 0
    for op in graph.operators:
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (graph.tensors[i] for i in op.inputs[:3])
        bias_type = {schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}.get(b.type)
        if bias_type is None or w.type != schema.TensorType.INT8 or b.name not in ref_tensors:
            continue
        ref_bias = ref_tensors[b.name]
        bias_f = np.frombuffer(bytes(ref.buffers[ref_bias.buffer].data), np.float32).astype(np.float64)
        bias_q = np.frombuffer(bytes(model.buffers[b.buffer].data), bias_type).copy()
        b_scale = np.broadcast_to(np.asarray(b.quantization.scale, np.float64), bias_q.shape).copy()
        w_scale = np.asarray(w.quantization.scale, np.float64)
        in_scale = float(x.quantization.scale[0])
        if bias_type is np.int32:
            # More than a step off (beyond float32 rounding of the scale itself): overflowed.
            broken = np.abs(bias_q * b_scale - bias_f) > b_scale + 1e-6 * np.abs(bias_f)
        else:
            # int16 activations (a16w8): the int64 bias fits, but the kernel's requantization
            # multiplier in_scale * w_scale / out_scale flushes to zero below 2^-31 (TFLite's
            # QuantizeMultiplier), which drops the channel's bias: the same dead channels.
            out_scale = float(graph.tensors[op.outputs[0]].quantization.scale[0])
            broken = np.broadcast_to(in_scale * w_scale / out_scale < MIN_MULTIPLIER, bias_q.shape) \
                & (bias_f != 0)
        if not broken.any():
            continue
        if w_scale.size != bias_q.size:
            raise ValueError(f"{int8_path}: per-tensor weights with an overflowed bias in {b.name!r}")
        axis = w.quantization.quantizedDimension
        w_q = np.frombuffer(bytes(model.buffers[w.buffer].data), np.int8).reshape(w.shape).copy()
        w_q = np.moveaxis(w_q, axis, 0)
        for c in np.flatnonzero(broken):
            new_scale = max(w_scale[c], abs(bias_f[c]) / (in_scale * BIAS_TARGET) if bias_type is np.int32
                            else out_scale * BIAS_MULTIPLIER / in_scale)
            w_q[c] = np.clip(np.round(w_q[c] * (w_scale[c] / new_scale)), -127, 127)
            w_scale[c] = new_scale
            b_scale[c] = in_scale * new_scale
            bias_q[c] = int(np.round(bias_f[c] / b_scale[c]))
            repaired += 1
        model.buffers[w.buffer].data = np.moveaxis(w_q, 0, axis).astype(np.int8).reshape(-1).view(np.uint8)
        model.buffers[b.buffer].data = bias_q.view(np.uint8)
        w.quantization.scale = w_scale.astype(np.float32).tolist()
        b.quantization.scale = b_scale.astype(np.float32).tolist()
    if repaired:
        _save(model, int8_path)
    return repaired


def graph_summary(path: Path) -> dict:
    """Op counts and tensor dtypes read from the flatbuffer; `integer_only`: no float tensor at all
    (so no op can run in float on the device) but float logits, the graph output a final DEQUANTIZE
    writes (Int8Build.float_logits); `float_logits` says whether there are."""
    schema = _schema()
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    ops, dtypes = collections.Counter(), collections.Counter()
    float_tensors, float_logits = 0, 0
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        outputs = set(graph.OutputsAsNumpy().tolist())
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            ops[name] += 1
            if name == "DEQUANTIZE":
                float_logits += sum(1 for t in op.OutputsAsNumpy().tolist() if t in outputs)
        for i in range(graph.TensorsLength()):
            dtypes[type_names[graph.Tensors(i).Type()]] += 1
            float_tensors += type_names[graph.Tensors(i).Type()].startswith("FLOAT")
    return {"ops": dict(sorted(ops.items())), "tensor_dtypes": dict(sorted(dtypes.items())),
            "integer_only": float_tensors == float_logits, "float_logits": float_logits > 0}


# ---------------------------------------------------------------- running

def interpreter(path: Path, threads: int, content: bytes | None = None):
    """The LiteRT interpreter of the file at `path`, or of `content` (a model in memory; `path`
    then only names it in errors)."""
    from ai_edge_litert.interpreter import Interpreter

    source = {"model_path": str(path)} if content is None else {"model_content": content}
    try:
        with _captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
            it = Interpreter(**source, num_threads=threads)
    except ValueError as err:
        raise UserError(f"{path}: LiteRT cannot load it ({str(err).splitlines()[0]})") from None
    it.allocate_tensors()
    return it


def tensor_quantization(detail: dict) -> dict:
    """dtype, scale and zero point of an input/output tensor (scale 0: not quantized)."""
    scale, zero_point = detail["quantization"]
    return {"dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point),
            "shape": [int(v) for v in detail["shape"]]}


class LiteRTRunner:
    """Runs a .tflite classifier in the LiteRT interpreter, one image at a time (batch 1, as on
    a device). Integer inputs are quantized from the normalised float input with the tensor's
    own scale/zero point; integer outputs are dequantized to float logits."""

    max_batch = 32  # images per predict() call; each is still invoked alone

    def __init__(self, path: Path, threads: int, spec: PreprocessSpec, content: bytes | None = None):
        self.interpreter = interpreter(path, threads, content)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.runtime = version()
        shape = [int(v) for v in self.input["shape"]]
        layout = "NCHW" if len(shape) == 4 and shape[1] == 3 and shape[3] != 3 else "NHWC"
        self.in_dtype = np.dtype(self.input["dtype"])
        self.in_scale, self.in_zero = self.input["quantization"]
        raw_pixels = takes_raw_pixels(self.in_dtype, self.in_scale)
        if self.in_dtype.kind in "iu" and not self.in_scale and not raw_pixels:
            raise UserError(f"{path}: {self.in_dtype.name} input without quantization parameters; "
                            f"edgeeff cannot tell how to feed it")
        # uint8 input without scale: the model wants the raw 0-255 pixels of the crop.
        self.spec = spec.with_layout(layout, "uint8" if raw_pixels else "float32")
        self.out_scale, self.out_zero = self.output["quantization"]

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        outputs = []
        index, out_index = self.input["index"], self.output["index"]
        for x in inputs:
            self.interpreter.set_tensor(index, to_input_tensor(x[None], self.in_dtype, self.in_scale, self.in_zero))
            self.interpreter.invoke()
            outputs.append(self.interpreter.get_tensor(out_index).reshape(-1).copy())
        return from_output_tensor(np.stack(outputs), self.out_scale, self.out_zero)


def open_runner(path: Path, threads: int, spec: PreprocessSpec) -> LiteRTRunner:
    return LiteRTRunner(path, threads, spec)


def inspect_input(path: Path) -> dict:
    """Layout, resolution and output width of a foreign .tflite, for `edgeeff eval` without a manifest."""
    it = interpreter(path, 1)
    shape = [int(v) for v in it.get_input_details()[0]["shape"]]
    out_shape = [int(v) for v in it.get_output_details()[0]["shape"]]
    layout = "NCHW" if len(shape) == 4 and shape[1] == 3 and shape[3] != 3 else "NHWC"
    resolution = (shape[2] if layout == "NCHW" else shape[1]) if len(shape) == 4 else None
    return {"layout": layout, "resolution": resolution, "num_outputs": out_shape[-1] if out_shape else None}


# ---------------------------------------------------------------- build

def _io_fields(path: Path) -> dict:
    """The report/manifest fields a device needs to feed the file and read its output."""
    it = interpreter(path, 1)
    inp, out = tensor_quantization(it.get_input_details()[0]), tensor_quantization(it.get_output_details()[0])
    fields = {"input": {"layout": "NHWC", "dtype": inp["dtype"], "shape": inp["shape"]},
              "output": {"dtype": out["dtype"], "shape": out["shape"], "kind": "logits"},
              "graph": graph_summary(path)}
    if inp["dtype"] != "float32":
        fields["input"].update({"scale": inp["scale"], "zero_point": inp["zero_point"],
                                "from": "normalised float x (manifest preprocess): "
                                        "q = clip(round(x / scale) + zero_point)"})
    if out["dtype"] != "float32":
        fields["output"].update({"scale": out["scale"], "zero_point": out["zero_point"],
                                 "dequantize": "logit = (q - zero_point) * scale"})
    return fields


def _searched_ranges(job, calib_nhwc: np.ndarray):
    """--optimize's searched ranges as a `range_overrides(float_path)` for the .tflite converted
    from job.optimised_model, or None. `calib_nhwc`: the images as the file takes them."""
    if job.optimisation is None or not job.optimisation.get("ranges"):
        return None
    from ..quant.tensor_names import rename_ranges, tflite_tensors_for_points

    model_input = job.spec.with_layout("NHWC", "float32").to_model_input(job.calibration.crops[:1])
    return lambda float_path: rename_ranges(job.optimisation["ranges"], tflite_tensors_for_points(
        job.optimised_model, float_path, model_input, file_input=calib_nhwc))


def in_graph_normalisation(target, spec: PreprocessSpec):
    """(mean, std) for the targets whose files take pixel / 255 (`pixel_input`), else None."""
    return (tuple(spec.mean), tuple(spec.std)) if target.raw.get("pixel_input", False) else None


def start_background_work(target, model, spec: PreprocessSpec) -> str:
    """For a later target of a multi-target compile (pipeline.start_background_work): its float
    conversion, which build() then copies. Returns what was started, for the progress line."""
    start_float_conversion(model, spec.resolution, in_graph_normalisation(target, spec))
    return "the float .tflite conversion"


def build(job) -> list:
    """`--target rpi|android|ios`: float32 reference, full-integer INT8, and FP16 when the profile
    asks for it (GPU delegates)."""
    from .artifact import Artifact

    target = job.target
    io_dtype = target.input_dtype
    # android, ios: the files take the pixels (x = pixel / 255) and normalise inside the graph, so
    # MediaPipe's and the Task Library's classifiers need one mean/std (0, 255 in pixel units) for
    # every variant (they refuse the B models' per-channel ImageNet mean/std), and the uint8 input of
    # the INT8 file is the pixel byte itself, which is what those classifiers feed it.
    normalise = in_graph_normalisation(target, job.spec)
    spec = job.spec.pixels_only() if normalise else job.spec
    spec = spec.with_layout("NHWC", "float32")  # the runner quantizes from this float input
    fp32 = job.workdir / "model_fp32.tflite"
    int8 = job.workdir / "model_int8.tflite"
    # --optimize rounding: the INT8 file is quantized from the same graph with its weights on their
    # learned grid (ai-edge-quantizer's max|w| / 127 per channel then rounds each to the learned
    # integer); model_fp32.tflite stays the original weights. A scratch file: the pipeline removes
    # the workdir's dot-files before it publishes the folder.
    source = fp32
    with _captured_output():
        convert_float(job.model, spec.resolution, fp32, normalise)
        if (job.optimisation or {}).get("setting") == "rounding":
            source = job.workdir / ".int8_source.tflite"
            convert_float(job.optimised_model, spec.resolution, source, normalise)
    calib = spec.to_model_input(job.calibration.crops)
    calibration = calibrate_int8(source, calib, job.recipe, threads=job.threads, quiet=job.quiet,
                                 range_overrides=_searched_ranges(job, calib),
                                 input_range=(0.0, 1.0) if normalise else None)
    float_logits = target.quantization.get("logits", "int8") == "float"
    # android, ios: TFLite metadata (normalisation, labels) for MediaPipe's and the Task Library's classifiers
    metadata = None
    if target.raw.get("metadata", False):
        from ..version import __version__

        metadata = {"labels": list(job.labels), "mean_01": list(spec.mean), "std_01": list(spec.std),
                    "name": f"EfficientNet {job.variant}", "version": f"edgeeff {__version__}"}
    bias_correction = None
    if quantization_for_model(target, job.model).get("bias_correction", False):  # by activation: measured
        from .tflite_bias_correction import BiasCorrection

        bias_correction = BiasCorrection(calib, job.threads, job.quiet, reference=fp32)
    int8_build = Int8Build(source, calibration, io_dtype, float_logits, metadata, bias_correction=bias_correction)
    details = int8_details(calibration, int8_build.write(int8))
    if int8_build.bias_correction_info is not None:
        details["bias_correction"] = int8_build.bias_correction_info
    ends = "input" if float_logits else "input and output"
    details["io"] = f"uint8 (integer QUANTIZE int8<->uint8 at {ends})" if io_dtype == "uint8" else "int8"
    if float_logits:
        details["logits"] = (f"float32: the classifier at a16w8, its int16 output (+-{LOGIT_HEADROOM:g}x the "
                             f"calibration's largest logit) dequantized")
    if job.optimisation is not None:
        details["optimisation"] = job.optimisation
    artifacts = [
        Artifact(file=fp32.name, format="tflite", precision="fp32", spec=spec, extra=_io_fields(fp32)),
        Artifact(file=int8.name, format="tflite", precision="int8", spec=spec, quantization=details,
                 extra=_io_fields(int8), state=int8_build),
    ]
    if target.quantization.get("fp16", False):
        fp16 = job.workdir / "model_fp16.tflite"
        fp16_details = quantize_fp16(fp32, fp16)
        artifacts.append(Artifact(file=fp16.name, format="tflite", precision="fp16", spec=spec,
                                  quantization=fp16_details, extra=_io_fields(fp16)))
    if normalise:
        for artifact in artifacts:
            artifact.extra["normalisation_in_graph"] = NORMALISATION_IN_GRAPH
    if metadata is not None:  # last: the quantizer reads the float file without it
        from .tflite_metadata import add_classifier_metadata

        for artifact in artifacts:
            info = add_classifier_metadata(job.workdir / artifact.file, **metadata) \
                if artifact.precision != "int8" else int8_build.metadata_info
            artifact.extra["metadata"] = info
    scripts = target.raw.get("device_scripts", [])  # rpi, android: rpi_classify.py
    if scripts:
        from . import ship_device_scripts

        ship_device_scripts(job.workdir, *scripts)  # + the device_preprocess.py they import
    return artifacts


# ---------------------------------------------------------------- layers at a16w8 (--max-drop, --sensitivity)

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
ACTIVATION_OPS = ("LOGISTIC", "RELU", "RELU6", "RELU_N1_TO_1", "HARD_SWISH", "TANH")
SCOPE_LIMIT = 10000  # ai-edge-quantizer truncates an op's scope (its name for regex matching) to this


@dataclass(frozen=True)
class TfliteOp:
    index: int  # position in the float .tflite's operator list
    name: str  # CONV_2D, LOGISTIC, ...
    inputs: tuple[str, ...]  # tensor names ("" for an absent optional input)
    outputs: tuple[str, ...]

    def regex(self) -> str:
        """A regex matching this op's scope alone: ai-edge-quantizer names an op by its output
        tensors' names, each followed by ';' (tfl_flatbuffer_utils.get_op_scope)."""
        scope = "".join(f"{name};" for name in self.outputs if name)
        return "^" + re.escape(scope[:SCOPE_LIMIT]) + ("$" if len(scope) <= SCOPE_LIMIT else "")


def tflite_graph(path: Path) -> tuple[list[TfliteOp], dict[str, tuple[int, ...]]]:
    """The first subgraph's ops in order, and the shapes of its constant tensors (weights)."""
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]

    def tensor(i: int) -> str:
        return graph.tensors[i].name.decode() if i >= 0 else ""

    ops = [TfliteOp(i, names.get(_builtin(model.operatorCodes[op.opcodeIndex]), "CUSTOM"),
                    tuple(tensor(t) for t in op.inputs), tuple(tensor(t) for t in op.outputs))
           for i, op in enumerate(graph.operators)]
    constants = {}
    for t in graph.tensors:
        buf = model.buffers[t.buffer]
        if (buf.data is not None and len(buf.data)) or buf.offset > 1:
            constants[t.name.decode()] = tuple(int(v) for v in t.shape)
    return ops, constants


def _readers(ops: list[TfliteOp]) -> dict[str, list[TfliteOp]]:
    out = collections.defaultdict(list)
    for op in ops:
        for name in op.inputs:
            if name:
                out[name].append(op)
    return out


def tflite_layers(ops: list[TfliteOp], constants: dict) -> list[tuple]:
    """The quantizable layers of a float .tflite: [(Layer, its TfliteOps)], in graph order.

    The rule (edgeeff/quant/layers.py's, on TFLite ops): a layer is a CONV_2D, DEPTHWISE_CONV_2D
    or FULLY_CONNECTED with constant weights, plus the activation reading its output: the one
    LOGISTIC / RELU* / HARD_SWISH / TANH that is its only reader, or swish's LOGISTIC and the MUL
    of the output by it (the converter fuses ReLU6 into the conv itself). A layer is named after
    its weighted op: the TFLite op name and its index in model_fp32.tflite's operator list
    (`CONV_2D_14`); an SE gate's LOGISTIC belongs to its expand conv, the SE multiply to no layer.
    """
    from ..quant.layers import Layer

    readers = _readers(ops)
    layers = []
    for op in ops:
        if op.name not in WEIGHTED_OPS or len(op.inputs) < 2 or op.inputs[1] not in constants:
            continue
        after = readers.get(op.outputs[0], [])
        activation: list[TfliteOp] = []
        if len(after) == 1 and after[0].name in ACTIVATION_OPS:
            activation = [after[0]]
        elif len(after) == 2 and sorted(a.name for a in after) == ["LOGISTIC", "MUL"]:
            sigmoid, mul = sorted(after, key=lambda a: a.name)
            if sigmoid.outputs[0] in mul.inputs:  # x * sigmoid(x): swish
                activation = [sigmoid, mul]
        shape = constants[op.inputs[1]]  # CONV_2D: (out, h, w, in); DEPTHWISE_CONV_2D: (1, h, w, out)
        kind = {"DEPTHWISE_CONV_2D": "depthwise", "FULLY_CONNECTED": "fc"}.get(op.name, "conv")
        if kind == "conv" and len(shape) == 4 and shape[1:3] == (1, 1):
            kind = "pointwise"
        chain = (op, *activation)
        layers.append((Layer(f"{op.name}_{op.index}", op.name, kind, tuple(f"{o.name}_{o.index}" for o in chain),
                             op.inputs[1], shape), chain))
    return layers


def a16w8_op_names() -> set[str]:
    """The ops ai-edge-quantizer's policy quantizes with int16 activations and int8 weights (its
    static_wi8_ai16 config: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, LOGISTIC, MUL, ADD, MEAN...;
    not HARD_SWISH)."""
    import json

    from ai_edge_quantizer import default_policy

    return set(json.loads(default_policy.DEFAULT_JSON_POLICY)["ops_per_config"]["static_wi8_ai16"])


def a16w8_recipe(quantizer, graph: list[TfliteOp], calibration: Int8Calibration, a16w8_ops) -> dict:
    """Give `a16w8_ops` int16 activations (symmetric, per tensor) and int8 weights (per channel) in
    `quantizer`'s recipe, one entry per op (regex on its scope + operation); returns the ranges to
    quantize with. ai-edge-quantizer puts a QUANTIZE op (int8 <-> int16) wherever an int8 and an
    int16 op share a tensor; an op its policy cannot run at a16w8 (HARD_SWISH) stays int8.

    Ranges: the INT8 file's own, so the INT8 ops around see the very scales they had, except for a
    tensor that is int16 end to end (produced and read only by ops at a16w8, e.g. a conv's output
    read by its swish): it takes the calibration's global min/max, as 16 bits have the resolution
    to keep the tail the INT8 range clips. The quantizer makes them symmetric (zero point 0).
    """
    import copy

    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    supported = a16w8_op_names()
    chosen = [op for op in a16w8_ops if op.name in supported]
    for op in chosen:
        quantizer.add_static_config(regex=op.regex(), operation_name=qtyping.TFLOperationName(op.name),
                                    activation_num_bits=16, weight_num_bits=8,
                                    weight_granularity=qtyping.QuantGranularity.CHANNELWISE,
                                    algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    at16 = {op.index for op in chosen}
    readers = _readers(graph)
    ranges = copy.deepcopy(calibration.ranges)  # the quantizer must not see (or change) the INT8 file's
    for op in chosen:
        for name in op.outputs:
            read_by = readers.get(name, [])
            if read_by and all(r.index in at16 for r in read_by) and name in calibration.extremes \
                    and np.size(ranges[name]["min"]) == 1:
                full = calibration.extremes[name]
                ranges[name] = _with_range(ranges[name], float(np.min(full["min"])), float(np.max(full["max"])))
    return ranges


LOGIT_HEADROOM = 2.0  # float logits: the int16 classifier output spans this many times the calibration's


@dataclass
class Int8Build:
    """How build() wrote the INT8 file, kept in memory (Artifact.state) so the a16w8 variants are
    quantized from the same float file and calibration, with the same I/O.

    `float_logits`: the classifier (the op writing the graph's output) runs at a16w8 and its int16
    output is dequantized to float32 logits by a DEQUANTIZE op: 8-bit logits tie close classes and,
    with a range from calibration, saturate on images more confident than any calibration image
    (Lite0 android, 650 val: 1.23% of images tied or saturated at int8, docs/quantization.md). The
    int16 output spans LOGIT_HEADROOM times the largest logit calibration saw, at ~1/1000 of a logit
    per step."""

    float_path: Path
    calibration: Int8Calibration
    io: str  # int8 | uint8
    float_logits: bool = False
    metadata: dict | None = None  # tflite_metadata.add_classifier_metadata's arguments: written into every file
    metadata_info: dict | None = None  # what it wrote (the report's `metadata`)
    # `bias_correction = true` in the target's [quantization]: every file's INT8 layers corrected
    bias_correction: BiasCorrection | None = None
    bias_correction_info: dict | None = None  # what the INT8 file's correction did (the report's)

    def write(self, out_path: Path, a16w8_ops=(), graph=()) -> int:
        """The INT8 file (with `a16w8_ops` at a16w8) at out_path; returns the bias channels repaired."""
        repaired = self._write(out_path, a16w8_ops, graph)
        if self.metadata is not None:
            from .tflite_metadata import add_classifier_metadata

            self.metadata_info = add_classifier_metadata(out_path, **self.metadata)
        return repaired

    def _write(self, out_path: Path, a16w8_ops=(), graph=()) -> int:
        calibration = self.calibration
        variant = bool(a16w8_ops)  # an a16w8 variant of --max-drop (the classifier below is not one)
        if self.float_logits:
            graph = graph or tflite_graph(self.float_path)[0]
            output = _graph_output_name(self.float_path)
            classifier = [op for op in graph if output in op.outputs]
            a16w8_ops = list(a16w8_ops) + [op for op in classifier if op not in a16w8_ops]
            extremes = calibration.extremes[output]
            reach = LOGIT_HEADROOM * max(abs(float(np.min(extremes["min"]))), abs(float(np.max(extremes["max"]))))
            ranges = {**calibration.ranges, output: _with_range(calibration.ranges[output], -reach, reach)}
            calibration = Int8Calibration(ranges, calibration.extremes, calibration.info)
        if self.io != "uint8" and not self.float_logits:
            return self._quantize(out_path, calibration, a16w8_ops, graph, variant)
        with tempfile.TemporaryDirectory(prefix="edgeeff-litert-") as tmp:
            native = Path(tmp) / "int8_io.tflite"
            repaired = self._quantize(native, calibration, a16w8_ops, graph, variant)
            if self.float_logits:
                dequantize_output(native, native)
            if self.io == "uint8":
                int8_io_to_uint8(native, out_path)
            else:
                out_path.write_bytes(native.read_bytes())
        return repaired

    def _quantize(self, path: Path, calibration: Int8Calibration, a16w8_ops, graph, variant: bool) -> int:
        """The quantizer's file with its biases corrected (before its I/O is changed: the tensor names
        are still the float file's); returns the bias channels repaired."""
        repaired = write_int8(self.float_path, path, calibration, a16w8_ops, graph)
        if self.bias_correction is not None:
            info = self.bias_correction.apply(path, self.float_path)
            if not variant:
                self.bias_correction_info = info
        return repaired


def _graph_output_name(path: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_output_details()[0]["name"]


def dequantize_output(src: Path, dst: Path) -> None:
    """The graph output's last op, the quantizer's QUANTIZE int16 -> int8 after an a16w8 classifier,
    becomes a DEQUANTIZE int16 -> float32: the logits leave the model in float, unrounded to 8 bits."""
    schema = _schema()
    model = _load_inlined(src)
    graph = model.subgraphs[0]
    out = int(graph.outputs[0])
    writer = next(op for op in graph.operators if out in list(op.outputs))
    source = graph.tensors[writer.inputs[0]]
    if _builtin(model.operatorCodes[writer.opcodeIndex]) != schema.BuiltinOperator.QUANTIZE \
            or source.type != schema.TensorType.INT16:
        raise ValueError(f"{src}: the graph output is not a QUANTIZE of an int16 classifier output")
    code = next((i for i, oc in enumerate(model.operatorCodes)
                 if _builtin(oc) == schema.BuiltinOperator.DEQUANTIZE), None)
    if code is None:
        opcode = schema.OperatorCodeT()
        opcode.builtinCode = opcode.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
        opcode.version = 4  # int16 input
        model.operatorCodes.append(opcode)
        code = len(model.operatorCodes) - 1
    writer.opcodeIndex = code
    writer.builtinOptionsType, writer.builtinOptions = 0, None
    graph.tensors[out].type = schema.TensorType.FLOAT32
    graph.tensors[out].quantization = None
    _save(model, dst)


class A16w8Variants:
    """The INT8 .tflite with chosen layers re-quantized at a16w8 (int16 activations, int8 weights):
    LiteRT's higher precision for the sensitivity analysis and the --max-drop fallback, which call
    it "float" in their interface (`runner(kept)`, `save(kept)`). Each variant is ai-edge-quantizer
    run again on the same float file with the same calibration ranges (no second calibration),
    the layers' ops added to its recipe at a16w8 (a16w8_recipe); layers: tflite_layers."""

    backend = "litert"
    kept_precision = "a16w8"

    def __init__(self, int8_path: Path, build: Int8Build, spec: PreprocessSpec, threads: int):
        self.int8_path, self.build, self.spec, self.threads = int8_path, build, spec, threads
        self.artifact = int8_path.name
        self.graph, self.constants = tflite_graph(build.float_path)
        found = tflite_layers(self.graph, self.constants)
        self.layers = [layer for layer, _ in found]
        self.ops = {layer.name: ops for layer, ops in found}
        self.all_int8 = int8_path.read_bytes()  # the file as build() wrote it

    def model(self, kept: list[str]) -> bytes:
        if not kept:
            return self.all_int8
        unknown = [name for name in kept if name not in self.ops]
        if unknown:
            raise ValueError(f"not layers of this model: {', '.join(unknown)}")
        with tempfile.TemporaryDirectory(prefix="edgeeff-a16w8-") as tmp:
            path = Path(tmp) / "variant.tflite"
            self.build.write(path, self.a16w8_ops(kept), self.graph)
            return path.read_bytes()

    def a16w8_ops(self, kept: list[str]) -> list[TfliteOp]:
        """The kept layers' ops, plus the ops between layers (residual ADD, SE's MEAN and multiply)
        whose every activation input comes from an op at a16w8: those run at a16w8 too, as
        layers.keep_float runs them in float, so no int8 tensor sits between two a16w8 layers."""
        chosen = {op.index for name in kept for op in self.ops[name]}
        in_layers = {op.index for ops in self.ops.values() for op in ops}
        producers = {name: op for op in self.graph for name in op.outputs}
        supported = a16w8_op_names()
        for op in self.graph:  # graph order is topological
            if op.index in in_layers or op.name not in supported:
                continue
            sources = [producers.get(name) for name in op.inputs if name and name not in self.constants]
            if sources and all(src is not None and src.index in chosen for src in sources):
                chosen.add(op.index)
        return [op for op in self.graph if op.index in chosen]

    def runner(self, kept: list[str]) -> LiteRTRunner:
        return LiteRTRunner(self.int8_path, self.threads, self.spec, content=self.model(kept))

    def save(self, kept: list[str]) -> None:
        """Rewrite the artifact with these layers at a16w8 (written beside it, renamed over it)."""
        tmp = self.int8_path.with_name(f".{self.int8_path.name}.tmp")
        tmp.write_bytes(self.model(kept))
        tmp.replace(self.int8_path)

    def layer_precision(self) -> dict[str, str]:
        """Each layer's precision as the artifact file holds it: its ops' output tensor types read
        back from the flatbuffer ("int8", "a16w8", or "a16w8 (<op> int8)" where an op of the layer
        has no int16 kernel)."""
        schema = _schema()
        model = schema.Model.GetRootAs(self.int8_path.read_bytes(), 0)
        graph = model.Subgraphs(0)
        types = {graph.Tensors(i).Name().decode(): graph.Tensors(i).Type() for i in range(graph.TensorsLength())}
        out = {}
        for layer in self.layers:
            wide = [types.get(op.outputs[0]) == schema.TensorType.INT16 for op in self.ops[layer.name]]
            if not wide[0]:
                out[layer.name] = "int8"
            else:
                narrow = [op.name for op, w in zip(self.ops[layer.name], wide) if not w]
                out[layer.name] = "a16w8" + (f" ({', '.join(narrow)} int8)" if narrow else "")
        return out


def float_variants(workdir: Path, artifacts: list, threads: int) -> A16w8Variants:
    int8 = next(a for a in artifacts if a.precision == "int8")
    return A16w8Variants(workdir / int8.file, int8.state, int8.spec, threads)


def _background_conversion(argv: list[str]) -> None:
    """start_float_conversion's worker, in its own process: MODULE.pt OUT.tflite RES [MEAN STD].
    One thread: it runs beside a compile that uses the others."""
    import torch

    torch.set_num_threads(1)
    module_file, out, resolution = argv[0], Path(argv[1]), int(argv[2])
    normalise = None
    if len(argv) > 3:
        normalise = (tuple(float(v) for v in argv[3].split(",")), tuple(float(v) for v in argv[4].split(",")))
    model = torch.load(module_file, weights_only=False)  # written by start_float_conversion, this command
    partial = out.with_name(out.stem + ".partial.tflite")
    convert_float(model, resolution, partial, normalise)  # its chatter goes to the log
    partial.replace(out)  # whole or absent: result() never copies half a file
