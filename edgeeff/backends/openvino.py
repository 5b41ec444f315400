"""OpenVINO backend: INT8 and FP32 OpenVINO IR for `--target intel`, and the runner for any IR .xml.

Conversion starts from the FP32 ONNX every target shares (job.fp32_onnx): one source of truth,
and the IR's node names are the ONNX names, stable between runs (converting from the torch module
names the convolutions `Multiply_<n>` with a counter that changes between conversions). Measured
on Lite0: the same accuracy either way (docs/quantization.md, "intel target").

Quantization is NNCF's post-training quantization (`nncf.quantize`) fed edgeeff's calibration
crops through the model's own preprocessing spec; the knobs (preset, fast bias correction,
overflow fix, ignored layers, target device) come from the target profile, chosen by measurement.

Preprocessing is baked into both IRs with OpenVINO's PrePostProcessor after quantization: the IR
takes uint8 RGB NHWC crops (resize + centre crop stay on the host, as manifest.json says) and does
the mean/scale and the NHWC->NCHW transpose itself. Measured: no accuracy change, slightly faster
than normalising on the host (the scale folds into the first convolution).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import numpy as np

from ..data.preprocess import PreprocessSpec
from ..errors import MissingBackendError, UserError

EXTRA = "openvino"
SUFFIXES = (".xml",)
# calibration recipes (calib/*.toml, by method) this backend implements through NNCF range estimators
RECIPE_METHODS = ("mean_minmax", "minmax")
DEVICE = "CPU"  # where edgeeff evaluates here; the same IR runs on Intel GPU/NPU (docs/intel.md)
# The CPU plugin runs f32 IRs in bf16 on AVX512-BF16/AMX CPUs unless told otherwise: edgeeff's
# FP32 figures are f32, and the float parts of the INT8 IR run in f32 too, so results do not
# depend on which Intel CPU evaluated them.
PRECISION_HINT = "f32"
# --optimize ranges: the searched ranges replace NNCF's in the FakeQuantize ops of the tensors
# they match (by value, through the FP32 ONNX the IR is converted from). The search simulates
# NNCF's placement for OpenVINO's CPU: no quantizer on conv outputs before their activation nor
# inside squeeze-excitation (NNCF leaves its convs float), and depthwise conv inputs quantized per
# channel (close to float; their ranges stay NNCF's).
OPTIMIZE_MODES = ("ranges", "refine")
SIMULATION = {"float_points": (".bn", ".se.pooled", ".se.reduce", ".se.act", ".se.expand"),
              "float_depthwise_inputs": True}


def available() -> None:
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        raise MissingBackendError("the intel target needs OpenVINO and NNCF: pip install 'edgeeff[openvino]'") from None


def version() -> str:
    import openvino

    return f"openvino {openvino.__version__.split('-')[0]}"


def compile_config(threads: int) -> dict:
    """The CPU plugin settings edgeeff evaluates and times with (and docs/intel.md shows)."""
    return {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": PRECISION_HINT}


def read_model(path: Path):
    import openvino as ov

    bin_path = Path(path).with_suffix(".bin")
    try:
        return ov.Core().read_model(str(path))
    except Exception as err:  # OpenVINO raises RuntimeError with a multi-line C++ message
        first = str(err).strip().splitlines()[-1][:160] if str(err).strip() else type(err).__name__
        hint = "" if bin_path.is_file() else f" (its weights {bin_path.name} should sit beside it)"
        raise UserError(f"{path}: OpenVINO cannot read it as an IR model{hint}: {first}") from None


class OvRunner:
    """Runs an OpenVINO IR classifier on the CPU plugin: fixed threads, f32 inference precision."""

    def __init__(self, path: Path, threads: int, spec: PreprocessSpec, model=None):
        import openvino as ov

        model = model if model is not None else read_model(path)
        inp = model.inputs[0]
        shape = inp.get_partial_shape()
        # A static batch dimension means feeding that many images (1 for our IRs) per call.
        self.max_batch = shape[0].get_length() if shape.rank.is_static and shape[0].is_static else 64
        dtype = "uint8" if inp.get_element_type() == ov.Type.u8 else "float32"
        self.spec = spec.with_layout(spec.layout, dtype)
        try:
            self.compiled = ov.Core().compile_model(model, DEVICE, compile_config(threads))
        except Exception as err:
            raise UserError(f"{path}: OpenVINO cannot compile it for {DEVICE}: "
                            f"{str(err).strip().splitlines()[-1][:160]}") from None
        self.request = self.compiled.create_infer_request()
        self.runtime = f"{version()} ({DEVICE}, {PRECISION_HINT})"

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return self.request.infer({0: inputs})[0].copy()


def open_runner(path: Path, threads: int, spec: PreprocessSpec) -> OvRunner:
    return OvRunner(path, threads, spec)


def inspect_input(path: Path) -> dict:
    """Layout, size and class count of a foreign IR's input/output, for `edgeeff eval` without a manifest."""
    model = read_model(path)
    shape = model.inputs[0].get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
    out = model.outputs[0].get_partial_shape()
    layout = "NHWC" if len(dims) == 4 and dims[3] == 3 else "NCHW"
    resolution = (dims[1] if layout == "NHWC" else dims[2]) if len(dims) == 4 else None
    last = out[out.rank.get_length() - 1] if out.rank.is_static and out.rank.get_length() else None
    num_outputs = last.get_length() if last is not None and last.is_static else None
    return {"layout": layout, "resolution": resolution, "num_outputs": num_outputs}


# ---------------------------------------------------------------------------------------------
# build


def convert(job):
    """FP32 OpenVINO model with a static [1, 3, H, W] input (batch 1: what edge apps run; NPUs need static shapes)."""
    import openvino as ov

    res = job.spec.resolution
    source = job.target.quantization.get("convert_from", "onnx")
    if source == "onnx":
        model = ov.convert_model(str(job.fp32_onnx))
    elif source == "torch":
        import torch

        model = ov.convert_model(job.model.eval(), example_input=torch.zeros(1, 3, res, res))
    else:
        raise UserError(f"target {job.target.name}: quantization.convert_from = {source!r}; use 'onnx' or 'torch'")
    model.reshape({model.inputs[0].get_any_name(): [1, 3, res, res]})
    return model


def add_preprocessing(model, spec: PreprocessSpec):
    """Bake uint8 NHWC input, mean/scale and the transpose into the IR. Mutates and returns `model`."""
    from openvino import Layout, Type
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(Type.u8).set_layout(Layout("NHWC"))
    ppp.input().model().set_layout(Layout("NCHW"))
    # (x / 255 - mean) / std == (x - 255 mean) / (255 std)
    ppp.input().preprocess().convert_element_type(Type.f32) \
        .mean([255.0 * m for m in spec.mean]).scale([255.0 * s for s in spec.std])
    return ppp.build()


_AUTO_NAME = re.compile(r"[A-Za-z]+_\d+")


def stable_names(model):
    """Rename nodes that carry OpenVINO's automatic `<Type>_<counter>` name (nodes NNCF and the
    PrePostProcessor create): the counter is process-wide, so the same model built twice in one
    process would get a different .xml. Position in the graph is stable. Returns `model`."""
    for index, op in enumerate(model.get_ordered_ops()):
        if _AUTO_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_n{index}")
    return model


def ignored_scope(model, names: list[str]):
    """NNCF IgnoredScope for the profile's `ignore` entries, chosen from the graph itself (not by
    name patterns: converter names are not stable across versions)."""
    import nncf

    if not names:
        return None
    ops = model.get_ordered_ops()
    weighted = [op for op in ops if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")]
    picked = []
    for name in names:
        if name == "first_conv":
            picked.append(weighted[0].get_friendly_name())
        elif name == "classifier":
            picked.append(next(op for op in reversed(weighted) if op.get_type_name() == "MatMul").get_friendly_name())
        else:
            raise UserError(f"quantization.ignore: {name!r} unknown; use first_conv and/or classifier")
    return nncf.IgnoredScope(names=picked)


def _enum(enum, key: str, value: str):
    """A profile string (e.g. preset = "mixed") as NNCF's enum member, or a one-line error."""
    try:
        return enum[str(value).upper()]
    except KeyError:
        raise UserError(f"target profile: quantization.{key} = {value!r}; NNCF knows "
                        f"{', '.join(m.name.lower() for m in enum)}") from None


def quantize(model, calib_inputs: np.ndarray, recipe: dict, quant: dict, quiet: bool = False):
    """nncf.quantize with the profile's settings; returns (quantized model, what was done)."""
    import logging

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    method = recipe["method"]
    if method not in RECIPE_METHODS:
        raise UserError(f"--calib-method {recipe['name']}: the intel target (NNCF) supports "
                        f"{', '.join(RECIPE_METHODS)} calibration")
    preset = quant.get("preset", "performance")
    overflow_fix = quant.get("overflow_fix", "disable")
    target_device = quant.get("target_device", "cpu")
    fast_bias_correction = bool(quant.get("fast_bias_correction", True))
    ignore = list(quant.get("ignore", []))
    advanced = {"overflow_fix": _enum(OverflowFix, "overflow_fix", overflow_fix)}
    if method == "minmax":
        advanced["activations_range_estimator_params"] = RangeEstimatorParametersSet.MINMAX
    scope = ignored_scope(model, ignore)
    dataset = nncf.Dataset(range(len(calib_inputs)), lambda i: calib_inputs[i:i + 1])
    # NNCF draws its own progress bars (rich, on stdout): shown only on a terminal and without --quiet.
    show = not quiet and sys.stdout.isatty()
    nncf.set_log_level(logging.WARNING if show else logging.ERROR)
    with contextlib.nullcontext() if show else contextlib.redirect_stdout(io.StringIO()):
        quantized = nncf.quantize(
            model, dataset,
            preset=_enum(nncf.QuantizationPreset, "preset", preset),
            target_device=_enum(nncf.TargetDevice, "target_device", target_device),
            subset_size=len(calib_inputs),
            fast_bias_correction=fast_bias_correction,
            ignored_scope=scope,
            advanced_parameters=AdvancedQuantizationParameters(**advanced),
        )
    details = {"quantizer": f"nncf {nncf.__version__}", "format": "OpenVINO IR (FakeQuantize)",
               "preset": preset, "target_device": target_device, "fast_bias_correction": fast_bias_correction,
               "overflow_fix": overflow_fix, "model_type": None,
               "ignored": scope.names if scope else [], "subset_size": len(calib_inputs),
               "calibration": method,
               "activation_ranges": "NNCF default (mean of per-image min/max)" if method == "mean_minmax"
               else "global min/max"}
    return quantized, details


def set_searched_ranges(model, ranges: dict[str, tuple[float, float]]) -> dict:
    """Rewrite the limits of each per-tensor activation FakeQuantize whose input tensor has a
    searched range (asymmetric, 256 levels, zero exactly on the grid as the simulation has it).
    Per-channel FakeQuantizes (depthwise inputs) keep NNCF's ranges. Mutates `model`; returns counts."""
    import openvino as ov

    from ..quant.simulation import _activation_qparams

    rewritten = kept = 0
    for fq in model.get_ordered_ops():
        if fq.get_type_name() != "FakeQuantize" or fq.input_value(0).get_node().get_type_name() == "Constant":
            continue
        names = fq.input_value(0).get_names()
        found = next((ranges[n] for n in sorted(names) if n in ranges), None)
        limits = [fq.input_value(i).get_node() for i in range(1, 5)]
        if found is None or int(fq.get_attributes()["levels"]) != 256 or any(
                lim.get_type_name() != "Constant" or lim.get_data().size != 1 for lim in limits):
            kept += 1
            continue
        scale, zero_point = _activation_qparams(*found)  # int8 [-128, 127]: u8 is the same grid shifted
        low = np.float32((-128 - zero_point) * scale)
        high = np.float32((127 - zero_point) * scale)
        for i, value in zip(range(1, 5), (low, high, low, high)):
            shape = limits[i - 1].get_data().shape
            fq.input(i).replace_source_output(ov.op.Constant(np.full(shape, value, np.float32)).output(0))
        rewritten += 1
    return {"fake_quantize_rewritten": rewritten, "fake_quantize_kept": kept}


def apply_searched_ranges(job, model, calib_inputs: np.ndarray, details: dict) -> None:
    """--optimize ranges: the searched ranges into NNCF's FakeQuantize ops (asymmetric presets only:
    the search simulates asymmetric activations)."""
    from . import onnxruntime as ort_backend

    overrides = ort_backend.searched_ranges(job, calib_inputs)
    if overrides is None:
        return
    if details["preset"] != "mixed":
        details["searched_ranges"] = f"not applied: NNCF preset {details['preset']} quantizes symmetrically"
        return
    import onnx

    ranges, info = overrides(onnx.load(str(job.fp32_onnx)))
    info.update(set_searched_ranges(model, ranges))
    model.validate_nodes_and_infer_types()
    details["searched_ranges"] = info


def build(job) -> list:
    """`--target intel`: model_fp32.xml/.bin (f32 weights) and model_int8.xml/.bin, preprocessing baked in."""
    import openvino as ov

    from .artifact import Artifact

    quant = dict(job.target.quantization)
    # Swish and hard-swish outputs go below zero: symmetric activations ("performance") waste
    # half of INT8 on them. Measured on the B0 swish + SE test model: mixed 91.23% agreement vs
    # performance 90.00%; on ReLU6 Lite0 performance stays best (98.00% vs 97.38%).
    act = job.model.describe().get("act") if hasattr(job.model, "describe") else None
    preset_by_act = dict(quant.get("preset_by_activation", {}))
    if act in preset_by_act:
        quant["preset"] = preset_by_act[act]
    float_spec = job.spec.with_layout("NCHW", "float32")
    calib_inputs = float_spec.to_model_input(job.calibration.crops)
    model = convert(job)
    quantized, details = quantize(model.clone(), calib_inputs, job.recipe, quant, quiet=job.quiet)
    details["convert_from"] = quant.get("convert_from", "onnx")
    apply_searched_ranges(job, quantized, calib_inputs, details)
    if job.optimisation is not None:
        details["optimisation"] = job.optimisation
    details["preprocessing"] = "baked into the IR (PrePostProcessor): uint8 RGB NHWC in, mean/scale inside"

    u8_spec = job.spec.with_layout("NHWC", "uint8")
    files = {"fp32": job.workdir / "model_fp32.xml", "int8": job.workdir / "model_int8.xml"}
    ov.save_model(stable_names(add_preprocessing(model, job.spec)), str(files["fp32"]), compress_to_fp16=False)
    ov.save_model(stable_names(add_preprocessing(quantized, job.spec)), str(files["int8"]),
                  compress_to_fp16=bool(quant.get("compress_to_fp16", False)))
    artifacts = []
    for precision, xml in files.items():
        bin_file = xml.with_suffix(".bin")
        # the IR is the pair: Artifact.size_bytes counts the weights file too
        extra = {"weights_file": bin_file.name, "preprocessing_in_model": True}
        artifacts.append(Artifact(file=xml.name, format="openvino", precision=precision, spec=u8_spec,
                                  quantization=details if precision == "int8" else None, extra=extra))
    from . import ship_device_scripts

    ship_device_scripts(job.workdir, *job.target.raw.get("device_scripts", []))  # + device_preprocess.py
    return artifacts


# ---------------------------------------------------------------------------------------------
# Layers kept in float (sensitivity analysis, --max-drop fallback)

WEIGHTED_TYPES = ("Convolution", "GroupConvolution", "MatMul")


def _layer_name(op) -> str:
    """The ONNX node name of a weighted op: OpenVINO's converter names a Conv with a bias
    `<onnx name>/WithoutBiases` (the bias becomes a separate Add named `<onnx name>`)."""
    return op.get_friendly_name().removesuffix("/WithoutBiases")


def _quantized_input(op):
    source = op.input_value(0).get_node()
    return source if source.get_type_name() == "FakeQuantize" else None


ELEMENTWISE_TYPES = ("Add", "Swish", "Sigmoid", "Multiply", "Clamp", "HSwish", "Relu", "Convert")


def _producing_layer(fq) -> str | None:
    """The layer whose output this FakeQuantize rounds (through its bias Add and activation)."""
    node = fq.input_value(0).get_node()
    for _ in range(4):
        if node.get_type_name() in WEIGHTED_TYPES:
            return _layer_name(node)
        if node.get_type_name() not in ELEMENTWISE_TYPES:
            return None
        node = node.input_value(0).get_node()
    return None


class OvFloatVariants:
    """The NNCF INT8 IR with chosen layers in float: the FakeQuantize on a float layer's input
    goes when no quantized layer reads it, and the layer gets its FP32 weights back (the same op
    in the FP32 IR) in place of the INT8 decompression subgraph. Layers are the weighted ops NNCF
    quantized (it leaves the squeeze-excitation convs float by design)."""

    backend = "openvino"

    def __init__(self, int8_xml: Path, fp32_xml: Path, spec: PreprocessSpec, threads: int):
        from ..quant.layers import Layer

        self.int8_path, self.spec, self.threads = int8_xml, spec, threads
        self.artifact = int8_xml.name
        self.int8 = read_model(int8_xml)
        fp32 = read_model(fp32_xml)
        self.fp32_weights = {_layer_name(op): op.input_value(1).get_node() for op in fp32.get_ordered_ops()
                             if op.get_type_name() in WEIGHTED_TYPES}
        self.fp32_biases = {op.get_friendly_name(): op.input_value(1).get_node() for op in fp32.get_ordered_ops()
                            if op.get_type_name() == "Add" and op.get_friendly_name() in self.fp32_weights
                            and op.input_value(1).get_node().get_type_name() == "Constant"}
        self.layers = []
        for op in self.int8.get_ordered_ops():
            if op.get_type_name() in WEIGHTED_TYPES and _quantized_input(op) is not None:
                name = _layer_name(op)
                shape = tuple(self.fp32_weights[name].get_output_shape(0)) if name in self.fp32_weights else ()
                kind = {"GroupConvolution": "depthwise", "MatMul": "fc"}.get(op.get_type_name(), "conv")
                if kind == "conv" and len(shape) == 4 and shape[2:] == (1, 1):
                    kind = "pointwise"
                self.layers.append(Layer(name, op.get_type_name(), kind, (name,), None, shape))

    def model(self, float_layers: list[str]):
        import openvino as ov

        if not float_layers:
            return self.int8
        model = self.int8.clone()
        floats = set(float_layers)
        weighted = {_layer_name(op): op for op in model.get_ordered_ops() if op.get_type_name() in WEIGHTED_TYPES}
        quantized = {name for name in weighted if name not in floats and _quantized_input(weighted[name]) is not None}
        for fq in [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]:
            readers = [t.get_node() for t in fq.output(0).get_target_inputs()]
            read_by = {_layer_name(r) for r in readers if r.get_type_name() in WEIGHTED_TYPES}
            if read_by & quantized:
                continue
            if read_by & floats or _producing_layer(fq) in floats:
                fq.output(0).replace(fq.input_value(0))  # every reader now takes the float tensor
        ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        for name in float_layers:
            # FP32 weights, and the FP32 bias: NNCF's bias correction tuned the bias for INT8.
            original = self.fp32_weights[name]
            weighted[name].input(1).replace_source_output(ov.op.Constant(original.get_data().copy()).output(0))
            if name in ops and name in self.fp32_biases and ops[name].get_type_name() == "Add":
                bias = self.fp32_biases[name]
                ops[name].input(1).replace_source_output(ov.op.Constant(bias.get_data().copy()).output(0))
        model.validate_nodes_and_infer_types()
        return model

    def runner(self, float_layers: list[str]) -> OvRunner:
        return OvRunner(self.int8_path, self.threads, self.spec, model=self.model(float_layers))

    def save(self, float_layers: list[str]) -> None:
        """Rewrite the IR with these layers in float. Written beside it and renamed over it: the
        loaded model maps the old .bin into memory, and overwriting a mapped file in place
        crashes the process (SIGBUS)."""
        import openvino as ov

        tmp = self.int8_path.with_name(f".{self.int8_path.stem}.tmp.xml")
        ov.save_model(stable_names(self.model(float_layers)), str(tmp), compress_to_fp16=False)
        tmp.with_suffix(".bin").replace(self.int8_path.with_suffix(".bin"))
        tmp.replace(self.int8_path)


def float_variants(workdir: Path, artifacts: list, threads: int) -> OvFloatVariants:
    int8 = next(a for a in artifacts if a.precision == "int8")
    fp32 = next(a for a in artifacts if a.precision == "fp32")
    return OvFloatVariants(workdir / int8.file, workdir / fp32.file, int8.spec, threads)
