"""Sweep LiteRT activation-range reductions on one model: calibrate once, quantize per reduction.

    python scripts/research/litert_range_sweep.py FP32.tflite --variant b0 --calib DIR --val DIR [--calib-count 300]

FP32.tflite: a compile's model_fp32.tflite. Each image's min/max per tensor is kept once; each
reduction (percentile over images of the per-image max, the mean, the quantizer's own 0.95 moving
average) is quantized and scored by top-1 agreement with the FP32 .tflite and top-1 on --val.
Reductions: pN (Nth percentile over images), mean, ema, mixA/B (tensors read by a LOGISTIC op,
i.e. swish and SE-gate inputs, at the Ath percentile, every other tensor at the Bth).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fp32", type=Path)
    ap.add_argument("--variant", default="b0")
    ap.add_argument("--calib", type=Path, required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--calib-count", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reductions", default="p100,p99.9,p99.5,mean,ema")
    args = ap.parse_args()

    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, qtyping
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    from edgeeff.backends import litert
    from edgeeff.data.images import load_calibration, load_validation, resolve_labels
    from edgeeff.models.family import spec_for_variant

    spec = spec_for_variant(args.variant).with_layout("NHWC", "float32")
    labels = resolve_labels(None)
    val = load_validation(args.val, labels, spec, quiet=True)
    cal_set = load_calibration(args.calib, args.calib_count, spec, quiet=True)
    calib = spec.to_model_input(cal_set.crops)

    def run(path: Path) -> np.ndarray:
        runner = litert.open_runner(path, args.threads, spec)
        return np.concatenate([runner.predict(runner.spec.to_model_input(val.crops[i:i + 32]))
                               for i in range(0, len(val.crops), 32)])

    ref = run(args.fp32).argmax(1)
    print(f"fp32 tflite top1 {100 * np.mean(ref == val.labels):.2f}", flush=True)

    signatures = Interpreter(model_path=str(args.fp32)).get_signature_list()
    key = next(iter(signatures))
    input_name = signatures[key]["inputs"][0]

    def new_quantizer():
        q = aeq.Quantizer(str(args.fp32))
        q.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                            activation_num_bits=8, weight_num_bits=8,
                            weight_granularity=qtyping.QuantGranularity.CHANNELWISE,
                            algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT)
        return q

    q = new_quantizer()
    t = time.time()
    with litert._captured_output():
        cal = calibrator.Calibrator(q._float_model_buffer, num_threads=args.threads,
                                    qsv_update_func=litert._keep_every_sample)
        for i in range(0, len(calib), 25):
            cal.calibrate({key: [{input_name: x[None].astype(np.float32)} for x in calib[i:i + 25]]},
                          q._recipe_manager)
    qsvs = cal.get_model_qsvs()
    print(f"calibrated {len(calib)} images in {time.time() - t:.0f}s", flush=True)

    model = litert._load_inlined(args.fp32)
    graph = model.subgraphs[0]
    logistic_inputs = {graph.tensors[op.inputs[0]].name.decode() for op in graph.operators
                       if model.operatorCodes[op.opcodeIndex].builtinCode == 14}  # LOGISTIC

    def reduce(name: str) -> dict:
        if name.startswith("mix"):  # mixA/B: tensors read by a sigmoid (swish, SE gate) at A, others at B
            a, b = (float(v) for v in name[3:].split("/"))
            ra, rb = litert.reduce_ranges(qsvs, a), litert.reduce_ranges(qsvs, b)
            return {t: (ra if t in logistic_inputs else rb)[t] for t in qsvs}
        if name.startswith("p"):
            return litert.reduce_ranges(qsvs, float(name[1:]))
        out = {}
        for tensor, qsv in qsvs.items():
            if "all_min" not in qsv:
                out[tensor] = {"min": qsv["min"], "max": qsv["max"]}
                continue
            lows, highs = np.stack(qsv["all_min"]), np.stack(qsv["all_max"])
            if name == "mean":
                lo, hi = lows.mean(0), highs.mean(0)
            elif name == "ema":  # ai-edge-quantizer's default: 0.95 moving average, in image order
                lo, hi = lows[0], highs[0]
                for a, b in zip(lows[1:], highs[1:]):
                    lo, hi = 0.95 * lo + 0.05 * a, 0.95 * hi + 0.05 * b
            else:
                raise SystemExit(f"unknown reduction {name}")
            shape = np.shape(qsv["min"])
            out[tensor] = {"min": np.asarray(lo, np.float32).reshape(shape),
                           "max": np.asarray(hi, np.float32).reshape(shape)}
        return out

    with tempfile.TemporaryDirectory() as tmp:
        for name in args.reductions.split(","):
            path = Path(tmp) / f"{name.replace('/', '_')}.tflite"
            qn = new_quantizer()
            with litert._captured_output():
                qn.quantize(reduce(name), enable_progress_report=False).export_model(str(path), overwrite=True)
            litert.repair_bias_overflow(path, args.fp32)
            pred = run(path).argmax(1)
            print(f"{name:8s} agreement {100 * np.mean(pred == ref):.2f}  top1 {100 * np.mean(pred == val.labels):.2f}",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
