#!/usr/bin/env python3
"""The variant chain on real images: original -> surgered variant -> recovered -> INT8 on the target.

Runs the real `edgeeff compile` with --act/--se/--recover distill (one command, as a user would),
then prints the chain and writes it, with the recovery's steps and timings, as JSON. The figures
in docs/variants.md come from this script.

    python scripts/bench_variants.py --weights B0.pth --calib CALIB --val VAL \\
        [--act hswish --se remove --recover-minutes 15 | --recover-steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeeff.pipeline import CompileOptions, compile_model  # noqa: E402
from edgeeff.report import chain_rows, format_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--target", default="onnx")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--train", type=Path, help="unlabelled training images (default: --calib)")
    parser.add_argument("--act", default="hswish")
    parser.add_argument("--se", default="remove")
    parser.add_argument("--recover-minutes", type=float, default=15.0)
    parser.add_argument("--recover-steps", type=int)
    parser.add_argument("--recover-lr", type=float)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="keep the output folder here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="default docs/results/variants_<variant>_<act>_<se>_<target>.json")
    args = parser.parse_args()
    out_json = args.json or (Path(__file__).resolve().parents[1] / "docs" / "results"
                             / f"variants_{args.variant}_{args.act}_{args.se}_{args.target}.json")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        _, report = compile_model(CompileOptions(
            variant=args.variant, target=args.target, out=out, calib=args.calib, val=args.val,
            weights=args.weights, threads=args.threads, force=True, quiet=True, latency_runs=100,
            act=args.act, se=args.se, recover="distill", recover_minutes=args.recover_minutes,
            recover_steps=args.recover_steps, recover_lr=args.recover_lr, train=args.train))
    rows = chain_rows(report)
    print("\n" + format_table(rows))
    recovery = report["recovery"]
    result = {
        "command": {"variant": args.variant, "target": args.target, "act": args.act, "se": args.se,
                    "recover_minutes": args.recover_minutes, "recover_steps": args.recover_steps,
                    "weights": str(args.weights), "calib": str(args.calib), "val": str(args.val)},
        "reference": report["reference"], "variant_chain": report["variant_chain"],
        "artifacts": [{k: a.get(k) for k in ("file", "precision", "top1", "top5", "top1_drop", "top1_agreement",
                                             "size_bytes", "latency_ms")} for a in report["artifacts"]],
        "surgery": report["model"]["surgery"], "recovery": recovery,
        "timings_s": report["timings_s"],
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nrecovery: {recovery['steps_done']} steps in {recovery['seconds']} s; wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
