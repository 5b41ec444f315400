#!/usr/bin/env python3
"""edgeeff against each toolchain's own documented default PTQ, on the same model and images.

For every backend installed: the toolchain's default quantizer(s) and edgeeff's artifact for the
matching target, all from the same FP32 model, the same calibration images and the same
validation images, each run in its own runtime. Latencies are measured here, back to back,
with a fixed thread count at batch 1.

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
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeeff.backends import backend as load_backend  # noqa: E402
from edgeeff.data import imagenet_labels, load_calibration, load_validation  # noqa: E402
from edgeeff.evaluate import TorchRunner, align_classes, measure_latency, predict_all, score  # noqa: E402
from edgeeff.export import export_onnx  # noqa: E402
from edgeeff.pipeline import CompileOptions, compile_model  # noqa: E402
from edgeeff.preprocess import spec_for_variant  # noqa: E402
from edgeeff.report import format_table  # noqa: E402
from edgeeff.weights import load_model  # noqa: E402

TARGET_FOR = {"onnxruntime": "onnx", "openvino": "intel", "litert": "rpi"}
NEEDS = {"onnxruntime": "onnxruntime", "openvino": "nncf", "litert": "ai_edge_quantizer"}


class _Reader:
    def __init__(self, name, inputs, batch=10):
        self.items = [{name: inputs[i:i + batch]} for i in range(0, len(inputs), batch)]
        self.it = iter(self.items)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.items)


def ort_defaults(fp32_onnx: Path, work: Path, calib_nchw: np.ndarray) -> list[tuple[str, Path]]:
    from onnxruntime.quantization import QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "ort_prepared.onnx"
    quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
    name = "input"
    made = []
    for method, kwargs in (("ort-defaults", {}),
                           ("ort-per-channel-u8s8", {"per_channel": True, "activation_type": QuantType.QUInt8,
                                                     "weight_type": QuantType.QInt8})):
        out = work / f"{method}.onnx"
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(prepared), str(out), _Reader(name, calib_nchw), **kwargs)
        made.append((method, out, time.perf_counter() - start))
    return made


def nncf_defaults(fp32_onnx: Path, work: Path, calib_nchw: np.ndarray) -> list[tuple[str, Path]]:
    import nncf
    import openvino as ov

    out = work / "nncf-defaults.xml"
    start = time.perf_counter()
    model = ov.convert_model(str(fp32_onnx))
    quantized = nncf.quantize(model, nncf.Dataset([x[None] for x in calib_nchw]), subset_size=len(calib_nchw))
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return [("nncf-defaults", out, time.perf_counter() - start)]


def aeq_defaults(float_tflite: Path, work: Path, calib_nhwc: np.ndarray) -> list[tuple[str, Path]]:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="lite0")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--calib-count", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--backends", nargs="+", default=list(TARGET_FOR))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model_name = args.variant if args.weights is None else f"{args.variant} ({args.weights.name})"
    out_json = args.json or REPO / "docs" / "results" / f"bench_vs_defaults_{args.variant}.json"

    model, _ = load_model(args.variant, args.weights)
    spec = spec_for_variant(args.variant)
    labels = imagenet_labels()
    val = load_validation(args.val, labels, spec, quiet=True)
    calib = load_calibration(args.calib, args.calib_count, spec, quiet=True)
    reference = predict_all(TorchRunner(model, spec, args.threads), val.crops, quiet=True)
    ref = score(reference, val.labels)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeeff-vs-defaults-") as tmp:
        work = Path(tmp)
        fp32_onnx = export_onnx(model, spec.resolution, work / "fp32.onnx")
        for name in args.backends:
            if importlib.util.find_spec(NEEDS[name]) is None:
                print(f"skipping {name}: not installed", file=sys.stderr)
                continue
            module = load_backend(name)
            target = TARGET_FOR[name]
            print(f"== {name}: edgeeff --target {target}", file=sys.stderr)
            _, report = compile_model(CompileOptions(
                variant=args.variant, target=target, out=work / "edgeeff", calib=args.calib,
                calib_count=args.calib_count, val=args.val, weights=args.weights, quiet=True,
                latency_runs=5, threads=args.threads))
            folder = work / "edgeeff" / f"{args.variant}-{target}"
            by_precision = {a["precision"]: a for a in report["artifacts"] if a.get("verified", True)}
            fp32_art, int8_art = by_precision["fp32"], by_precision["int8"]
            candidates = [("edgeeff", folder / int8_art["file"], report["timings_s"]["quantize"])]
            print(f"== {name}: toolchain defaults", file=sys.stderr)
            if name == "onnxruntime":
                candidates += ort_defaults(fp32_onnx, work, spec.to_model_input(calib.crops))
            elif name == "openvino":
                candidates += nncf_defaults(fp32_onnx, work, spec.to_model_input(calib.crops))
            else:
                float_tflite = folder / fp32_art["file"]
                candidates += aeq_defaults(float_tflite, work, spec.with_layout("NHWC").to_model_input(calib.crops))
            fp32_spec = spec.with_layout(fp32_art["input"]["layout"], fp32_art["input"]["dtype"])
            fp32_runner = module.open_runner(folder / fp32_art["file"], args.threads, fp32_spec)
            fp32_latency = measure_latency(fp32_runner, val.crops[0], args.threads, runs=args.latency_runs)["median"]
            for method, path, seconds in candidates:
                art_spec = (spec.with_layout(int8_art["input"]["layout"], int8_art["input"]["dtype"])
                            if method == "edgeeff" else spec.with_layout("NHWC" if name == "litert" else "NCHW"))
                runner = module.open_runner(path, args.threads, art_spec)
                logits = align_classes(predict_all(runner, val.crops, quiet=True), len(labels.synsets))
                s = score(logits, val.labels, ref.top1_classes)
                latency = measure_latency(runner, val.crops[0], args.threads, runs=args.latency_runs)["median"]
                size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
                rows.append({"model": model_name, "backend": name, "method": method,
                             "top1": round(s.top1, 2), "top5": round(s.top5, 2),
                             "top1_drop": round(ref.top1 - s.top1, 2), "top1_agreement": round(s.top1_agreement, 2),
                             "latency_ms": round(latency, 3), "fp32_latency_ms": round(fp32_latency, 3),
                             "latency_ratio": round(latency / fp32_latency, 3), "size_bytes": size,
                             "quantize_seconds": round(seconds, 1)})
                print(f"   {method}: agreement {s.top1_agreement:.2f}", file=sys.stderr)

    table = [["model", "backend", "method", "top-1", "drop", "agree%", "ms", "x FP32", "MB", "quant s"]]
    for r in rows:
        table.append([r["model"], r["backend"], r["method"], f"{r['top1']:.2f}", f"{r['top1_drop']:.2f}",
                      f"{r['top1_agreement']:.2f}", f"{r['latency_ms']:.2f}", f"{r['latency_ratio']:.2f}",
                      f"{r['size_bytes'] / 1e6:.2f}", f"{r['quantize_seconds']:.0f}"])
    print(format_table(table))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(rows, indent=2) + "\n")
    meta = out_json.with_suffix(".machine.json")
    meta.write_text(json.dumps({"host": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                                "reference_top1": round(ref.top1, 2), "val_images": len(val),
                                "calib_images": len(calib), "load_average_at_end": os.getloadavg()}, indent=2) + "\n")
    markdown_section(REPO / "docs" / "benchmarks.md", f"vs-defaults-{args.variant}", model_name, rows,
                     {"host": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "threads": args.threads, "load": round(os.getloadavg()[0], 1),
                      "reference_top1": round(ref.top1, 2), "val": len(val), "calib": len(calib)})
    print(f"\nwrote {out_json} and docs/benchmarks.md")
    return 0


def markdown_section(path: Path, key: str, model_name: str, rows: list[dict], machine: dict) -> None:
    """Replace (or append) this model's section of docs/benchmarks.md, between markers."""
    lines = [f"<!-- begin:{key} -->", f"### {model_name}", "",
             f"FP32 reference top-1 {machine['reference_top1']}; {machine['calib']} calibration and "
             f"{machine['val']} validation images; {machine['threads']} threads, batch 1, on "
             f"{machine['cpus']} CPUs ({machine['host']}), 1-minute load average {machine['load']} at the end "
             "(other jobs shared the CPU when it is above ~2: compare latency ratios, not milliseconds).", "",
             "| backend | method | top-1 | drop | agreement % | latency ms | x FP32 | size MB | quantize s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bold = "**" if r["method"] == "edgeeff" else ""
        lines.append(f"| {r['backend']} | {bold}{r['method']}{bold} | {r['top1']:.2f} | {r['top1_drop']:.2f} | "
                     f"{bold}{r['top1_agreement']:.2f}{bold} | {r['latency_ms']:.2f} | {r['latency_ratio']:.2f} | "
                     f"{r['size_bytes'] / 1e6:.2f} | {r['quantize_seconds']:.0f} |")
    lines.append(f"<!-- end:{key} -->")
    block = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- begin:{key} -->", f"<!-- end:{key} -->"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
