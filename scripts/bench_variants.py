#!/usr/bin/env python3
"""The variant chain on real images: original -> surgered variant -> recovered -> INT8 per target.

The first target runs the real `edgeeff compile` with --act/--se/--recover distill (one command,
as a user would); every further target compiles that run's recovered.pth (the same weights: no
second recovery), so the original's chain and each target's INT8 cost against the recovered FP32
model are all measured. Prints the chains and writes them, with the recovery's steps, timings
and the machine's load, as JSON. The figures in docs/variants.md come from this script.

    python scripts/bench_variants.py --weights B0.pth --calib CALIB --val VAL \\
        [--targets rpi,onnx] [--act hswish --se remove --recover-minutes 15 | --recover-steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeeff.pipeline import CompileOptions, compile_model  # noqa: E402
from edgeeff.report.contract import chain_rows, format_table, table_rows  # noqa: E402

ARTIFACT_KEYS = ("file", "precision", "runtime", "top1", "top5", "top1_drop", "top1_agreement", "top1_vs_variant",
                 "size_bytes", "latency_ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--targets", default="rpi,onnx", help="comma-separated; the first one recovers")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--train", type=Path, help="unlabelled training images (default: --calib)")
    parser.add_argument("--act", default="hswish")
    parser.add_argument("--se", default="remove")
    parser.add_argument("--recover", default="distill", choices=["distill", "none"])
    parser.add_argument("--recover-minutes", type=float, default=15.0)
    parser.add_argument("--recover-steps", type=int)
    parser.add_argument("--recover-params", choices=["bn", "all"])
    parser.add_argument("--recover-lr", type=float)
    parser.add_argument("--recover-temperature", type=float)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale-groups", choices=["auto", "off"],
                        help="for every target (default: each target's own setting; scale_groups.py)")
    parser.add_argument("--out", type=Path, help="keep the output folders here (default: a temporary folder)")
    parser.add_argument("--json", type=Path,
                        help="default docs/results/variants_<variant>_<act>_<se>[_norecover].json")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    suffix = "" if args.recover == "distill" else "_norecover"
    out_json = args.json or (Path(__file__).resolve().parents[1] / "docs" / "results"
                             / f"variants_{args.variant}_{args.act}_{args.se}{suffix}.json")
    loads = {"start": os.getloadavg()}
    started = time.time()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        common = dict(variant=args.variant, out=out, calib=args.calib, val=args.val, threads=args.threads,
                      force=True, quiet=True, latency_runs=50, scale_groups=args.scale_groups)
        folder, first = compile_model(CompileOptions(
            target=targets[0], weights=args.weights, act=args.act, se=args.se, recover=args.recover,
            recover_minutes=args.recover_minutes, recover_steps=args.recover_steps, recover_lr=args.recover_lr,
            recover_temperature=args.recover_temperature, recover_params=args.recover_params,
            train=args.train, **common))
        loads[f"after {targets[0]}"] = os.getloadavg()
        results[targets[0]] = first
        recovered = folder / "recovered.pth"
        for target in targets[1:]:
            if recovered.is_file():  # the recovered weights; reference = the recovered FP32 model itself
                _, report = compile_model(CompileOptions(target=target, weights=recovered, **common))
            else:
                _, report = compile_model(CompileOptions(target=target, weights=args.weights, act=args.act,
                                                         se=args.se, **common))
            loads[f"after {target}"] = os.getloadavg()
            results[target] = report
    print("\n" + format_table(chain_rows(first)))
    for target in targets[1:]:
        print(f"\n{target} (compiled from the first run's {'recovered.pth' if recovered.is_file() else 'variant'}):")
        print(format_table(table_rows(results[target])))
    last_stage = first["variant_chain"][-1]
    per_target = {}
    for target, report in results.items():
        rows = []
        for a in report["artifacts"]:
            row = {k: a.get(k) for k in ARTIFACT_KEYS if k in a}
            if "top1_vs_variant" not in row and a.get("top1") is not None:
                # compiled from recovered.pth: its reference *is* the recovered FP32 model
                row["top1_vs_variant"] = {"drop": a["top1_drop"], "agreement": a["top1_agreement"]}
            rows.append(row)
        per_target[target] = {"calibration": report["calibration"], "artifacts": rows,
                              "reference": report["reference"]}
    result = {
        "command": {"variant": args.variant, "targets": targets, "act": args.act, "se": args.se,
                    "recover": args.recover, "recover_minutes": args.recover_minutes,
                    "recover_steps": args.recover_steps, "recover_params": args.recover_params,
                    "weights": str(args.weights), "calib": str(args.calib),
                    "val": str(args.val), "scale_groups": args.scale_groups},
        "reference": first["reference"], "variant_chain": first["variant_chain"],
        "variant_stage_of_targets": last_stage["stage"],
        "targets": per_target,
        "surgery": first["model"].get("surgery"), "recovery": first.get("recovery"),
        "timings_s": {t: r["timings_s"] for t, r in results.items()},
        "wall_s": round(time.time() - started, 1),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "load_avg": loads},
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    rec = first.get("recovery")
    if rec:
        print(f"\nrecovery: {rec['steps_done']} steps in {rec['seconds']} s")
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
