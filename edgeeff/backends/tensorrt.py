"""TensorRT backend (Jetson targets): explicit-INT8 QDQ ONNX, and the engine or the command for it.

TensorRT 10 deprecated implicit INT8 calibrators and 11 removed them: INT8 on TensorRT is an
explicitly quantized ONNX (edgeeff/quant/qdq.py places the Q/DQ nodes and checks TensorRT's rules on
every model it writes). The engine itself is specific to the GPU and TensorRT version it is
built with, so it is built on the device: through the TensorRT Python API when `tensorrt`
imports here, otherwise edgeeff writes the exact `trtexec` command into manifest.json and ships
jetson_build_engine.sh / jetson_eval_engine.py (and the device_preprocess.py the latter imports)
beside the models.

Accuracy of the QDQ model is measured here in ONNX Runtime as a proxy for TensorRT (same Q/DQ
arithmetic; TensorRT's fused kernels round differently); the report says so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..data.preprocess import PreprocessSpec
from ..errors import MissingBackendError, UserError
from ..profiles import quantization_for_model
from . import onnxruntime as ort_backend
from . import ship_device_scripts

EXTRA = "jetson"
SUFFIXES = (".onnx",)  # the QDQ/FP32 ONNX run in ONNX Runtime; a .engine needs the device
ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"
BUILD_SCRIPT = "jetson_build_engine.sh"
EVAL_SCRIPT = "jetson_eval_engine.py"
PROXY = "ONNX Runtime (CPU) as a proxy for TensorRT: same Q/DQ scales and placement, not TensorRT's kernels"


def available() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise MissingBackendError("the jetson targets need ONNX Runtime to calibrate and check the QDQ model: "
                                  "pip install 'edgeeff[jetson]'") from None


def tensorrt_module():
    """The `tensorrt` module, or None (PyPI's `tensorrt` wheels are placeholders off NVIDIA hosts)."""
    try:
        import tensorrt

        tensorrt.Builder  # noqa: B018  (placeholder packages import but have no Builder)
        return tensorrt
    except (ImportError, AttributeError, OSError):
        return None


def open_runner(path: Path, threads: int, spec: PreprocessSpec):
    if Path(path).suffix.lower() == ".engine":
        raise UserError(f"{path}: a TensorRT engine runs only on the device it was built for: "
                        f"use {EVAL_SCRIPT} there")
    return ort_backend.open_runner(path, threads, spec)


def inspect_input(path: Path) -> dict:
    return ort_backend.inspect_input(path)


# ---------------------------------------------------------------------------------------------
# Engine build commands


def _version_tuple(version: str) -> tuple[int, int]:
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def trtexec_command(onnx_file: str, precision: str, resolution: int, max_batch: int, workspace_mb: int,
                    tensorrt_version: str) -> str:
    """The trtexec command that builds the engine with a given TensorRT version.

    int8: the QDQ ONNX with --int8 (explicit quantization: the Q/DQ scales are used, no
    calibrator) and --fp16 so layers outside Q/DQ may run in FP16 rather than FP32.
    fp16: the FP32 ONNX with --fp16 (Jetson Nano's Maxwell GPU has no fast INT8).
    --workspace was replaced by --memPoolSize in TensorRT 8.4 and removed in 10.
    """
    shape = f"input:{{}}x3x{resolution}x{resolution}"
    flags = ["--int8", "--fp16"] if precision == "int8" else ["--fp16"]
    workspace = (f"--memPoolSize=workspace:{workspace_mb}" if _version_tuple(tensorrt_version) >= (8, 4)
                 else f"--workspace={workspace_mb}")
    return " ".join(["trtexec", f"--onnx={onnx_file}", f"--saveEngine={ENGINE}", *flags,
                     f"--minShapes={shape.format(1)}", f"--optShapes={shape.format(1)}",
                     f"--maxShapes={shape.format(max_batch)}", workspace, f"--timingCacheFile={TIMING_CACHE}"])


def build_plan(cfg: dict, resolution: int) -> dict:
    """What manifest.json says about building the engine on the device."""
    precision = cfg.get("engine_precision", "int8")
    max_batch, workspace = int(cfg.get("max_batch", 8)), int(cfg.get("workspace_mb", 1024))
    sources = {"int8": "model_qdq.onnx", "fp16": "model_fp32.onnx"}
    versions = {"tensorrt>=8.4": "10.3", "tensorrt<8.4": "8.2"}
    return {
        "tool": "trtexec", "engine": ENGINE, "precision": precision, "source": sources[precision],
        "tensorrt": cfg.get("tensorrt", ""), "max_batch": max_batch, "timing_cache": TIMING_CACHE,
        "commands": {p: {k: trtexec_command(src, p, resolution, max_batch, workspace, v) for k, v in versions.items()}
                     for p, src in sources.items()},
        "script": f"bash {BUILD_SCRIPT} . {precision}",
        "evaluate": f"python3 {EVAL_SCRIPT} . --val VAL_DIR [--synsets synsets.txt]",
    }


def build_engine_here(trt, onnx_path: Path, out_dir: Path, plan: dict, resolution: int) -> Path:
    """Build the engine with the TensorRT Python API (explicit quantization; FP16 allowed)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = _version_tuple(trt.__version__)[0]
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    if plan["precision"] == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ scales, no calibrator
    config.set_flag(trt.BuilderFlag.FP16)
    workspace = 1 << 30
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:  # TensorRT < 8.4
        config.max_workspace_size = workspace
    profile = builder.create_optimization_profile()
    small = (1, 3, resolution, resolution)
    profile.set_shape(network.get_input(0).name, small, small, (plan["max_batch"], 3, resolution, resolution))
    config.add_optimization_profile(profile)
    cache_path = out_dir / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path.name}")
    engine = out_dir / ENGINE
    engine.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine


# ---------------------------------------------------------------------------------------------
# build(job)


# --optimize: searched ranges replace the recipe's for the tensors they match; the optimisation
# simulates TensorRT's arithmetic: symmetric activations, no Q/DQ on conv outputs (the placement),
# the residual branch's project conv fused with its Add (float until the sum is quantized)
OPTIMIZE_MODES = ("ranges", "refine")
SIMULATION = {"symmetric": True, "float_points": (".bn", ".se.reduce", ".se.expand"),
              "float_residual_branches": True}
# The tensors `centre_pointwise_inputs` centres, as simulation points: those only 1x1 convs (or the
# classifier) read. On MBConv models: the SE output (project conv input), the SE's pooled vector
# and inner activation, the pooled features, and a block's output without residual (the next
# expand conv's input); qdq.shiftable_tensors decides on the real graph, this is the simulation's
# approximation of it.
CENTRED_POINTS = (".se.out", ".se.act", "pooled", ".project.out")


def simulation(target, model) -> dict:
    """How this target's runtime quantizes `model`, for quant/optimise.py's simulation."""
    centred = quantization_for_model(target, model).get("centre_pointwise_inputs", False)
    return {**SIMULATION, **({"asymmetric_points": CENTRED_POINTS} if centred else {})}


def quantize_for_tensorrt(fp32_path: Path, out_path: Path, calib_inputs: np.ndarray, recipe: dict,
                          quant: dict, max_opset: int | None = None, quiet: bool = False,
                          range_overrides=None, stats_source: Path | None = None) -> dict:
    """Write the QDQ model for TensorRT from a prepared FP32 ONNX, check it, return what was done.
    `stats_source`: another graph of the same model whose calibration statistics serve if they are
    this one's (calibration.stats_from_equivalent_graph): ONNX Runtime's prepared graph of the export."""
    import onnx

    from ..quant.calibration import (
        HISTOGRAM_METHODS,
        OWN_METHODS,
        cached_stats,
        elementwise_readers,
        stats_from_equivalent_graph,
        tensor_ranges,
    )
    from ..quant.qdq import build_qdq, check_tensorrt_rules, plan_placement, shiftable_tensors

    method = recipe["method"]
    if method not in OWN_METHODS:
        raise UserError(f"--calib-method {recipe['name']}: the jetson targets take edgeeff's own ranges "
                        f"({', '.join(OWN_METHODS)}); {method} is ONNX Runtime's calibrator")
    batch, histograms = int(recipe.get("batch", 10)), method in HISTOGRAM_METHODS
    shared = None if stats_source is None else stats_from_equivalent_graph(
        fp32_path, stats_source, calib_inputs, batch, quiet=quiet, histograms=histograms)
    stats, hit = shared or cached_stats(fp32_path, calib_inputs, batch, quiet=quiet, histograms=histograms)
    fp32 = onnx.load(str(fp32_path))
    ranges = tensor_ranges(stats, recipe, symmetric=True, readers=elementwise_readers(fp32))
    searched, searched_info = {}, None
    if range_overrides is not None:  # --optimize: the searched ranges (see onnxruntime.quantize)
        searched, searched_info = range_overrides(fp32)
        ranges.update({name: r for name, r in searched.items() if name in ranges})
    plan = plan_placement(fp32, quant.get("placement", "nvidia"))
    shifted = {}
    if quant.get("centre_pointwise_inputs"):
        # The tensors only 1x1 convs read are centred before their Q (qdq.shiftable_tensors): they
        # take the recipe's asymmetric range, which their zero-point-0 scale then covers alone.
        own = tensor_ranges(stats, recipe, symmetric=False, readers=elementwise_readers(fp32))
        shifted = {t: searched.get(t, own[t]) for t in shiftable_tensors(fp32, plan)}
    qdq = build_qdq(fp32, plan, ranges, shifted=shifted)
    from ..quant import bias_correction

    optimised = range_overrides is not None
    corrected = None
    if bias_correction.wanted(quant, optimised):
        # TensorRT keeps biases in float, so the correction is exact (no INT32 grid).
        corrected = bias_correction.correct_biases(qdq, fp32, calib_inputs, quiet=quiet)
    skipped = bias_correction.skipped_reason(quant, optimised)
    check_tensorrt_rules(qdq, f"{out_path.name} (before writing)", max_opset=max_opset)
    onnx.save(qdq, str(out_path))
    # The rules are checked again on the bytes as written: that file is what ships.
    summary = check_tensorrt_rules(onnx.load(str(out_path)), out_path.name, max_opset=max_opset)
    return {"quantizer": "edgeeff QDQ for TensorRT", "format": "QDQ", "mode": "explicit",
            "activations": "int8 symmetric per-tensor", "weights": "int8 symmetric per-channel (axis 0)",
            "bias": "float", "calibration": method, "calibration_stats_cached": hit,
            "calibration_stats_from": "onnx runtime's prepared graph of the export" if shared else "this graph",
            "placement": plan.name, "qdq_pairs": plan.counts(), "tensorrt_rules_check": summary,
            **({"centred_inputs": len(shifted)} if shifted else {}),
            **({"bias_correction": corrected} if corrected else {}),
            **({"bias_correction_skipped": skipped} if skipped else {}),
            **({"searched_ranges": searched_info} if searched_info else {})}


def build(job) -> list:
    """--target jetson-*: model_fp32.onnx, model_qdq.onnx (checked), model.engine or its command."""
    import onnx

    from ..quant.qdq import prepare_for_tensorrt
    from .artifact import Artifact

    cfg = dict(job.target.raw.get("tensorrt", {}))
    spec = job.spec.with_layout("NCHW", "float32")
    fp32 = job.workdir / "model_fp32.onnx"
    onnx.save(prepare_for_tensorrt(onnx.load(str(job.fp32_onnx)), int(cfg.get("opset", 17))), str(fp32))
    qdq = job.workdir / "model_qdq.onnx"
    calib_inputs = spec.to_model_input(job.calibration.crops)
    with tempfile.TemporaryDirectory(prefix="edgeeff-trt-") as tmp:
        # The graph the onnx target calibrates, from the same export: its statistics (cached by its
        # bytes) are this graph's when the tensors match, so `--target onnx,jetson` collects them once.
        ort_prepared = Path(tmp) / "prepared.onnx"
        ort_backend.prepare_for_quantizer(job.fp32_onnx, ort_prepared)
        details = quantize_for_tensorrt(fp32, qdq, calib_inputs, job.recipe,
                                        quantization_for_model(job.target, job.model),
                                        max_opset=cfg.get("max_opset"), quiet=job.quiet,
                                        range_overrides=ort_backend.searched_ranges(job, calib_inputs),
                                        stats_source=ort_prepared)
    if job.optimisation is not None:
        details["optimisation"] = job.optimisation
    ship_device_scripts(job.workdir, BUILD_SCRIPT, EVAL_SCRIPT)  # + device_preprocess.py
    plan = build_plan(cfg, spec.resolution)
    artifacts = [
        Artifact(file=fp32.name, format="onnx", precision="fp32", spec=spec,
                 extra={"role": "source of the FP16 engine; FP32 check of the export"}),
        Artifact(file=qdq.name, format="onnx", precision="int8", spec=spec, quantization=details,
                 verified_by=PROXY),
    ]
    trt = tensorrt_module()
    if trt is None:
        reason = (f"tensorrt is not installed on this machine: build it on the device with {BUILD_SCRIPT} "
                  f"(in this folder)")
        artifacts.append(Artifact(file=ENGINE, format="tensorrt", precision=plan["precision"], spec=spec,
                                  verified=False, runnable_here=False, reason=reason, extra={"build": plan}))
    else:
        source = job.workdir / plan["source"]
        build_engine_here(trt, source, job.workdir, plan, spec.resolution)
        reason = (f"built here with TensorRT {trt.__version__} for this machine's GPU; an engine is specific to "
                  f"the GPU and TensorRT version: rebuild and evaluate it on the device ({EVAL_SCRIPT})")
        artifacts.append(Artifact(file=ENGINE, format="tensorrt", precision=plan["precision"], spec=spec,
                                  verified=False, runnable_here=False, reason=reason,
                                  extra={"build": {**plan, "built_with": f"tensorrt {trt.__version__}"}}))
    return artifacts


def float_variants(workdir: Path, artifacts: list, threads: int):
    """Layers kept in float in the QDQ model: no Q/DQ on their inputs and float weights, which
    TensorRT runs in FP16 (checked here in ONNX Runtime, like the QDQ model itself)."""
    import onnx

    from ..quant.qdq import check_tensorrt_rules
    from .onnxruntime import QdqFloatVariants

    int8 = next(a for a in artifacts if a.precision == "int8")

    def check(model, float_layers):
        summary = check_tensorrt_rules(model, f"{int8.file} with {len(float_layers)} layer(s) in float",
                                       float_layers=tuple(float_layers))
        int8.quantization["tensorrt_rules_check"] = summary

    return QdqFloatVariants(workdir / int8.file, onnx.load(str(workdir / "model_fp32.onnx")), int8.spec, threads,
                            "tensorrt", needed_by="consumers", check=check)
