#!/usr/bin/env python3
"""TensorRT QDQ placements x calibration range methods, measured in ONNX Runtime (the proxy).

One FP32 export and one calibration pass per variant; then one QDQ model per (placement,
method), scored on the validation images against the PyTorch FP32 reference. This is how the
jetson targets' placement and range method were chosen (docs/jetson.md).

    python scripts/bench_jetson.py --variant b0 --weights W.pth --calib CALIB --val VAL
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeeff.backends.onnxruntime import OrtRunner  # noqa: E402
from edgeeff.data.images import imagenet_labels, load_calibration, load_validation  # noqa: E402
from edgeeff.models.export import export_onnx  # noqa: E402
from edgeeff.models.family import spec_for_variant  # noqa: E402
from edgeeff.models.weights import load_model  # noqa: E402
from edgeeff.profiles import get_recipe  # noqa: E402
from edgeeff.quant.calibration import cached_stats, tensor_ranges  # noqa: E402
from edgeeff.quant.qdq import PLACEMENTS, build_qdq, plan_placement, prepare_for_tensorrt, tensorrt_rule_violations  # noqa: E402
from edgeeff.report.benchmarks import add_model_and_data_arguments, report_row  # noqa: E402
from edgeeff.report.contract import format_table
from edgeeff.scoring import TorchRunner, predict_all, score  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data_arguments(p)
    p.add_argument("--placements", nargs="+", default=list(PLACEMENTS))
    p.add_argument("--methods", nargs="+", default=["minmax", "percentile", "mse"])
    p.add_argument("--percentile", type=float, default=None, help="override the percentile recipe's value")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out_json = args.json or Path(__file__).resolve().parents[1] / "docs" / "results" / f"bench_jetson_{args.variant}.json"

    model, _ = load_model(args.variant, args.weights, "auto")
    spec = spec_for_variant(args.variant)
    labels = imagenet_labels()
    calib = load_calibration(args.calib, args.calib_count, spec, quiet=True)
    val = load_validation(args.val, labels, spec, quiet=True)
    ref = score(predict_all(TorchRunner(model, spec), val.crops, quiet=True), val.labels)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(model, spec.resolution, Path(tmp) / "raw.onnx")
        fp32 = prepare_for_tensorrt(onnx.load(str(raw)), 17)
        fp32_path = Path(tmp) / "fp32.onnx"
        onnx.save(fp32, str(fp32_path))
        stats, _ = cached_stats(fp32_path, spec.to_model_input(calib.crops), 10, quiet=True)
        for method in args.methods:
            recipe = dict(get_recipe(method))
            if args.percentile and method == "percentile":
                recipe["percentile"] = args.percentile
            ranges = tensor_ranges(stats, recipe, symmetric=True)
            for placement in args.placements:
                plan = plan_placement(fp32, placement)
                qdq = build_qdq(fp32, plan, ranges)
                path = Path(tmp) / f"{placement}_{method}.onnx"
                onnx.save(qdq, str(path))
                violations = tensorrt_rule_violations(qdq)
                s = score(predict_all(OrtRunner(path, 2, spec), val.crops, quiet=True), val.labels, ref.top1_classes)
                row = report_row(s, ref.top1, variant=args.variant, placement=placement, method=method,
                                 percentile=recipe.get("percentile") if method == "percentile" else None,
                                 reference_top1=round(ref.top1, 2))
                row.update({"qdq_pairs": plan.counts(), "size_bytes": path.stat().st_size,
                            "tensorrt_rules": "pass" if not violations else f"{len(violations)} violations"})
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    table = [["placement", "method", "top-1", "drop", "agree%", "Q/DQ pairs", "MB", "rules"]]
    for r in rows:
        table.append([r["placement"], r["method"], f"{r['top1']:.2f}", f"{r['top1_drop']:.2f}",
                      f"{r['top1_agreement']:.2f}", str(sum(r["qdq_pairs"].values())),
                      f"{r['size_bytes'] / 1e6:.2f}", r["tensorrt_rules"]])
    print(f"FP32 reference top-1 {ref.top1:.2f} ({len(val)} images)")
    print(format_table(table))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"calib": str(args.calib), "val": str(args.val), "images": len(val),
                                    "reference_top1": round(ref.top1, 2), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
