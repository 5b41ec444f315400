#!/usr/bin/env python3
"""edgeeff against each toolchain's own documented default PTQ, on the same model and images.

For every backend installed: the toolchain's default quantizer(s) and edgeeff's artifact for the
matching target, all from the same FP32 model, the same calibration images and the same
validation images, each run in its own runtime. Latencies are measured here at batch 1 with a
fixed thread count, the backend's FP32 file and every INT8 file taking turns every few runs (a
shared machine's load then weighs on all of them alike); the ratio to FP32 is what to compare.
Progress goes to stderr with the elapsed time. The FP32 reference logits are cached like
`edgeeff compile`'s (EDGEEFF_CACHE); edgeeff's own build runs with the cache off, so its
quantization time is the full calibration, as the defaults' is.

  onnxruntime: quantize_static with its defaults; and its best documented per-channel setting
               (per_channel=True, U8 activations, S8 weights)       vs edgeeff --target onnx
  openvino:    nncf.quantize defaults                                vs edgeeff --target intel
  litert:      ai-edge-quantizer static_wi8_ai8 recipe (defaults)    vs edgeeff --target rpi

    python scripts/bench_vs_defaults.py --variant lite0 --calib CALIB --val VAL [--json FILE]
    python scripts/bench_vs_defaults.py --variant b0 --weights B0.pth --calib CALIB --val VAL
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeeff.backends import backend as load_backend  # noqa: E402
from edgeeff.cache import cached_array, content_key  # noqa: E402
from edgeeff.data.images import imagenet_labels, load_calibration, load_validation  # noqa: E402
from edgeeff.models.export import export_onnx  # noqa: E402
from edgeeff.models.family import spec_for_variant  # noqa: E402
from edgeeff.models.weights import load_model  # noqa: E402
from edgeeff.pipeline import CompileOptions, compile_model  # noqa: E402
from edgeeff.report.benchmarks import (  # noqa: E402
    add_model_and_data_arguments,
    machine_info,
    machine_line,
    replace_section,
    report_row,
)
from edgeeff.report.contract import format_table, markdown_table  # noqa: E402
from edgeeff.scoring import TorchRunner, align_classes, predict_all, score  # noqa: E402

TARGET_FOR = {"onnxruntime": "onnx", "openvino": "intel", "litert": "rpi"}
T0 = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, with the time since the start: a run takes minutes per backend."""
    elapsed = int(time.perf_counter() - T0)
    print(f"[{elapsed // 60:2d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)
NEEDS = {"onnxruntime": "onnxruntime", "openvino": "nncf", "litert": "ai_edge_quantizer"}


class _Reader:
    def __init__(self, name, inputs, batch=10):
        self.items = [{name: inputs[i:i + batch]} for i in range(0, len(inputs), batch)]
        self.it = iter(self.items)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.items)


def ort_defaults(fp32_onnx: Path, work: Path, calib_nchw: np.ndarray) -> list[tuple[str, Path, float]]:
    from onnxruntime.quantization import QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "ort_prepared.onnx"
    start = time.perf_counter()
    quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
    prepare_seconds = time.perf_counter() - start  # ORT's documented first step, counted in each row
    name = "input"
    made = []
    for method, kwargs in (("ort-defaults", {}),
                           ("ort-per-channel-u8s8", {"per_channel": True, "activation_type": QuantType.QUInt8,
                                                     "weight_type": QuantType.QInt8})):
        out = work / f"{method}.onnx"
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(prepared), str(out), _Reader(name, calib_nchw), **kwargs)
        made.append((method, out, time.perf_counter() - start + prepare_seconds))
    return made


def nncf_defaults(fp32_onnx: Path, work: Path, calib_nchw: np.ndarray) -> list[tuple[str, Path, float]]:
    import nncf
    import openvino as ov

    out = work / "nncf-defaults.xml"
    start = time.perf_counter()
    model = ov.convert_model(str(fp32_onnx))
    quantized = nncf.quantize(model, nncf.Dataset([x[None] for x in calib_nchw]), subset_size=len(calib_nchw))
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return [("nncf-defaults", out, time.perf_counter() - start)]


def aeq_defaults(float_tflite: Path, work: Path, calib_nhwc: np.ndarray) -> list[tuple[str, Path, float]]:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    out = work / "aeq-static-wi8-ai8.tflite"
    start = time.perf_counter()
    signatures = Interpreter(model_path=str(float_tflite)).get_signature_list()
    key = next(iter(signatures))
    input_name = signatures[key]["inputs"][0]
    q = quantizer.Quantizer(str(float_tflite))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    with contextlib.redirect_stdout(io.StringIO()):
        calibration = q.calibrate({key: [{input_name: x[None].astype(np.float32)} for x in calib_nhwc]}, num_threads=2)
        q.quantize(calibration, enable_progress_report=False).export_model(str(out), overwrite=True)
    return [("aeq-static-wi8-ai8", out, time.perf_counter() - start)]


@contextlib.contextmanager
def cache_off():
    previous = os.environ.get("EDGEEFF_CACHE")
    os.environ["EDGEEFF_CACHE"] = "off"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("EDGEEFF_CACHE")
        else:
            os.environ["EDGEEFF_CACHE"] = previous


def interleaved_latency(runners: dict, crop: np.ndarray, rounds: int, runs: int) -> dict[str, list[float]]:
    """Batch-1 latencies (ms) of each runner, `rounds` times `runs` calls, the runners taking turns
    every `runs` calls: on a shared machine the load then weighs on all of them alike."""
    inputs = {}
    for name, runner in runners.items():
        inputs[name] = runner.spec.to_model_input(crop[None])
        for _ in range(10):
            runner.predict(inputs[name])
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            for _ in range(runs):
                start = time.perf_counter()
                runner.predict(inputs[name])
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def ratio_range(times: list[float], fp32_times: list[float], groups: int = 5) -> list[float]:
    """Lowest and highest median-over-median ratio over `groups` consecutive stretches of the run:
    how much the ratio moved while it was measured."""
    size = max(1, len(times) // groups)
    ratios = [statistics.median(times[i:i + size]) / statistics.median(fp32_times[i:i + size])
              for i in range(0, size * groups, size) if times[i:i + size]]
    return [round(min(ratios), 3), round(max(ratios), 3)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data_arguments(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-rounds", type=int, default=40,
                        help="rounds of --latency-runs timed calls per file, the files taking turns each round")
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=list(TARGET_FOR))
    parser.add_argument("--json", type=Path, help="default docs/results/bench_vs_defaults_<variant>.json")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite this model's section of docs/benchmarks.md")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite the doc section from the saved --json and its .run.json")
    args = parser.parse_args()
    model_name = args.variant if args.weights is None else f"{args.variant} ({args.weights.name})"
    out_json = args.json or REPO / "docs" / "results" / f"bench_vs_defaults_{args.variant}.json"
    if args.render_only:
        write_doc(args.variant, json.loads(out_json.read_text()),
                  json.loads(out_json.with_suffix(".run.json").read_text()))
        return 0
    machine_start = machine_info()
    timings: dict[str, float] = {}

    log(f"{model_name}: loading the model, {args.calib_count} calibration and the validation images")
    model, weights_info = load_model(args.variant, args.weights)
    spec = spec_for_variant(args.variant)
    labels = imagenet_labels()
    val = load_validation(args.val, labels, spec, quiet=True)
    calib = load_calibration(args.calib, args.calib_count, spec, quiet=True)
    reference_runner = TorchRunner(model, spec, args.threads)
    # The same cache key as `edgeeff compile`: either one's FP32 reference logits serve the other.
    key = content_key(weights_info.sha256 or weights_info.source, model.describe(), model.state_dict_digest(),
                      val.crops, reference_runner.runtime)
    reference, reference_cached = cached_array("reference_logits", key,
                                               lambda: predict_all(reference_runner, val.crops, quiet=True))
    ref = score(reference, val.labels)
    timings["load_and_reference"] = round(time.perf_counter() - T0, 1)
    log(f"FP32 reference top-1 {ref.top1:.2f} on {len(val)} images; {len(calib)} calibration images")
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeeff-vs-defaults-") as tmp:
        work = Path(tmp)
        fp32_onnx = export_onnx(model, spec.resolution, work / "fp32.onnx")
        for name in args.backends:
            if importlib.util.find_spec(NEEDS[name]) is None:
                log(f"skipping {name}: {NEEDS[name]} is not installed")
                continue
            backend_start = time.perf_counter()
            module = load_backend(name)
            target = TARGET_FOR[name]
            log(f"{name}: edgeeff compile --target {target}")
            # No --val: compile would evaluate its FP32 and INT8 files on every validation image, and
            # this script evaluates the INT8 one again beside the defaults. The build does not read --val.
            # The cache off: edgeeff's calibration statistics are cached by content, and a hit
            # would time a lookup against the defaults' full calibration.
            with cache_off():
                _, report = compile_model(CompileOptions(
                    variant=args.variant, target=target, out=work / "edgeeff", calib=args.calib,
                    calib_count=args.calib_count, weights=args.weights, quiet=True, latency_runs=3,
                    threads=args.threads))
            folder = work / "edgeeff" / f"{args.variant}-{target}"
            by_precision = {a["precision"]: a for a in report["artifacts"] if a.get("verified", True)}
            fp32_art, int8_art = by_precision["fp32"], by_precision["int8"]
            candidates = [("edgeeff", folder / int8_art["file"], report["timings_s"]["quantize"])]
            log(f"{name}: edgeeff built in {report['timings_s']['quantize']:.0f} s; toolchain defaults")
            if name == "onnxruntime":
                candidates += ort_defaults(fp32_onnx, work, spec.to_model_input(calib.crops))
            elif name == "openvino":
                candidates += nncf_defaults(fp32_onnx, work, spec.to_model_input(calib.crops))
            else:
                float_tflite = folder / fp32_art["file"]
                candidates += aeq_defaults(float_tflite, work, spec.with_layout("NHWC").to_model_input(calib.crops))
            fp32_spec = spec.with_layout(fp32_art["input"]["layout"], fp32_art["input"]["dtype"])
            runners = {"fp32": module.open_runner(folder / fp32_art["file"], args.threads, fp32_spec)}
            backend_rows = []
            for method, path, seconds in candidates:
                art_spec = (spec.with_layout(int8_art["input"]["layout"], int8_art["input"]["dtype"])
                            if method == "edgeeff" else spec.with_layout("NHWC" if name == "litert" else "NCHW"))
                runner = runners[method] = module.open_runner(path, args.threads, art_spec)
                log(f"{name}: {method} built in {seconds:.0f} s; evaluating on {len(val)} images")
                logits = align_classes(predict_all(runner, val.crops, quiet=True), len(labels.synsets))
                s = score(logits, val.labels, ref.top1_classes)
                size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
                backend_rows.append(report_row(s, ref.top1, model=model_name, backend=name, method=method,
                                               size_bytes=size, quantize_seconds=round(seconds, 1)))
                log(f"{name}: {method} top-1 {s.top1:.2f}, agreement {s.top1_agreement:.2f}%")
            log(f"{name}: latency, {args.latency_rounds} rounds of {args.latency_runs} runs per file, alternating")
            times = interleaved_latency(runners, val.crops[0], args.latency_rounds, args.latency_runs)
            fp32_ms = statistics.median(times["fp32"])
            for row in backend_rows:
                latency = statistics.median(times[row["method"]])
                low, high = ratio_range(times[row["method"]], times["fp32"])
                row.update({"latency_ms": round(latency, 3), "fp32_latency_ms": round(fp32_ms, 3),
                            "latency_ratio": round(latency / fp32_ms, 3), "latency_ratio_range": [low, high],
                            "threads": args.threads})
                log(f"{name}: {row['method']} {latency:.2f} ms, x{latency / fp32_ms:.2f} of FP32 "
                    f"(x{low:.2f}-{high:.2f} over five stretches of the run)")
            rows += backend_rows
            timings[name] = round(time.perf_counter() - backend_start, 1)
            log(f"{name}: done in {timings[name]:.0f} s")
    timings["total"] = round(time.perf_counter() - T0, 1)
    machine = machine_info()
    machine["load_average_at_start"] = machine_start["load_average"]

    table = [["model", "backend", "method", "top-1", "top-5", "drop", "agree%", "ms", "x FP32", "MB", "quant s"]]
    for r in rows:
        table.append([r["model"], r["backend"], r["method"], f"{r['top1']:.2f}", f"{r['top5']:.2f}",
                      f"{r['top1_drop']:.2f}", f"{r['top1_agreement']:.2f}", f"{r['latency_ms']:.2f}",
                      f"{r['latency_ratio']:.2f}", f"{r['size_bytes'] / 1e6:.2f}", f"{r['quantize_seconds']:.0f}"])
    print(format_table(table))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(rows, indent=2) + "\n")
    run = {"model": model_name, "variant": args.variant, "weights": str(args.weights) if args.weights else None,
           "calib": str(args.calib), "calib_images": len(calib), "val": str(args.val), "val_images": len(val),
           "reference_top1": round(ref.top1, 2), "reference_top5": round(ref.top5, 2),
           "reference_cached": reference_cached, "threads": args.threads,
           "latency": f"median of {args.latency_rounds * args.latency_runs} batch-1 runs per file, the backend's "
                      f"FP32 and INT8 files taking turns every {args.latency_runs} runs",
           "wall_seconds": timings, "machine": machine}
    out_json.with_suffix(".run.json").write_text(json.dumps(run, indent=2) + "\n")
    if not args.no_doc:
        write_doc(args.variant, rows, run)
    log(f"wrote {out_json}, {out_json.with_suffix('.run.json').name}" + ("" if args.no_doc else " and docs/benchmarks.md")
        + f"; total {timings['total']:.0f} s")
    return 0


def write_doc(variant: str, rows: list[dict], run: dict) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    doc.write_text(replace_section(doc.read_text(), f"vs-defaults-{variant}", markdown_section(rows, run)))


def bar_lines(rows: list[dict]) -> list[str]:
    """Per backend, the issue's bar: edgeeff's agreement at least the best default's, and its
    latency ratio no worse than that default's (overlapping ranges: not told apart here)."""
    lines = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        ours = next((r for r in rows if r["backend"] == backend and r["method"] == "edgeeff"), None)
        others = [r for r in rows if r["backend"] == backend and r["method"] != "edgeeff"]
        if ours is None or not others:
            continue
        best = max(others, key=lambda r: r["top1_agreement"])
        diff = ours["top1_agreement"] - best["top1_agreement"]
        accuracy = "met" if diff >= 0 else "**not met**"
        low, high = ours["latency_ratio_range"]
        best_low, best_high = best["latency_ratio_range"]
        if ours["latency_ratio"] <= best["latency_ratio"]:
            speed = "no worse"
        elif low <= best_high and best_low <= high:
            speed = "higher, but within the run's noise (the ranges overlap)"
        else:
            speed = "**worse**"
        lines.append(f"- {backend}: agreement {ours['top1_agreement']:.2f} vs {best['top1_agreement']:.2f} "
                     f"({best['method']}, the best default): {accuracy} ({diff:+.2f} points); latency ratio "
                     f"{ours['latency_ratio']:.2f} vs {best['latency_ratio']:.2f}: {speed}")
    return lines


def markdown_section(rows: list[dict], run: dict) -> str:
    """This model's part of docs/benchmarks.md: how it was run, then the table."""
    m = run["machine"]
    start = "/".join(f"{x:.1f}" for x in m["load_average_at_start"])
    lines = [f"### {run['model']}", "",
             f"FP32 reference (PyTorch) top-1 {run['reference_top1']}, top-5 {run['reference_top5']}; "
             f"{run['calib_images']} calibration and {run['val_images']} validation images; latency: "
             f"{run['latency']}, {run['threads']} threads. Machine: {machine_line(m)} at the end "
             f"({start} at the start); the run took {run['wall_seconds']['total'] / 60:.1f} min"
             f"{' (FP32 reference logits from the cache)' if run.get('reference_cached') else ''}. "
             "Other jobs share these CPUs: compare latency ratios, not milliseconds; the ratio's range is its "
             "lowest and highest over five consecutive stretches of the timing.", ""]
    table = [["backend", "method", "top-1", "top-5", "drop", "agreement %", "latency ms", "x FP32", "x FP32 range", "size MB",
              "quantize s"]]
    for r in rows:
        bold = "**" if r["method"] == "edgeeff" else ""
        table.append([r["backend"], f"{bold}{r['method']}{bold}", f"{r['top1']:.2f}", f"{r['top5']:.2f}",
                      f"{r['top1_drop']:.2f}", f"{bold}{r['top1_agreement']:.2f}{bold}", f"{r['latency_ms']:.2f}",
                      f"{r['latency_ratio']:.2f}", "{:.2f}-{:.2f}".format(*r["latency_ratio_range"]),
                      f"{r['size_bytes'] / 1e6:.2f}", f"{r['quantize_seconds']:.0f}"])
    return "\n".join(lines + markdown_table(table) + ["", "The issue's bar, per backend:", ""] + bar_lines(rows))


if __name__ == "__main__":
    sys.exit(main())
