#!/usr/bin/env python3
"""Recovery settings compared at a fixed step count: which defaults recover a variant best.

For each setting it does what `compile --act A --se S --recover distill --recover-steps N` does
up to the export (the same load, the same surgery with gate statistics on the first
--calib-count spread calibration images, distill() on every image of --calib), then scores the
recovered FP32 model in PyTorch on --val: top-1, top-5 and top-1 agreement with the original.
No INT8 here: scripts/bench_variants.py measures the whole chain for the chosen defaults.
Appends one JSON line per setting to --json and prints a table. The comparison in
docs/variants.md comes from this script.

    python scripts/research/recovery_sweep.py --variant b0 --weights B0.pth --calib CALIB --val VAL --steps 483 \\
        --setting 'previous={"train": "all", "augment": "rrc-flip"}' --setting 'default={}'

A setting is NAME=JSON: RecoverySettings fields over the current defaults.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgeeff.data.images import imagenet_labels, load_calibration, load_validation  # noqa: E402
from edgeeff.models.distill import RecoverySettings, distill  # noqa: E402
from edgeeff.models.family import spec_for_variant  # noqa: E402
from edgeeff.models.surgery import make_variant  # noqa: E402
from edgeeff.models.weights import load_model  # noqa: E402
from edgeeff.report.benchmarks import add_model_and_data_arguments, machine_info  # noqa: E402
from edgeeff.scoring import TorchRunner, predict_all, score  # noqa: E402


def parse_setting(text: str) -> tuple[str, dict]:
    name, sep, fields = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--setting {text!r}: expected NAME=JSON, e.g. 'bn={{\"train\": \"bn\"}}'")
    try:
        return name, json.loads(fields)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--setting {name}: not JSON ({err})") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data_arguments(parser)
    parser.add_argument("--act", default="hswish")
    parser.add_argument("--se", default="remove")
    parser.add_argument("--steps", type=int, default=483, help="recovery steps per setting (default 483)")
    parser.add_argument("--setting", action="append", required=True, metavar="NAME=JSON")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "results"
                        / "recovery_sweep.jsonl", help="appends one line per setting")
    args = parser.parse_args()
    settings = [parse_setting(s) for s in args.setting]

    import torch

    torch.set_num_threads(args.threads)
    spec = spec_for_variant(args.variant)
    original, _ = load_model(args.variant, args.weights)
    original.eval()
    gates = load_calibration(args.calib, args.calib_count, spec, quiet=True)  # what compile's surgery sees
    train = load_calibration(args.calib, 10 ** 9, spec, quiet=True)  # what compile's recovery sees
    val = load_validation(args.val, imagenet_labels(), spec, quiet=True)
    reference = predict_all(TorchRunner(original, spec, args.threads), val.crops, quiet=True)
    ref_top1 = reference.argmax(1)
    surgered = copy.deepcopy(original)
    make_variant(surgered, args.act, args.se, gates.crops, spec)
    rows = [{"name": "original", **score(reference, val.labels).as_dict()},
            {"name": f"{args.act}, SE {args.se}, no recovery",
             **score(predict_all(TorchRunner(surgered, spec, args.threads), val.crops, quiet=True),
                     val.labels, ref_top1).as_dict()}]
    for name, fields in settings:
        student = copy.deepcopy(surgered)
        chosen = RecoverySettings(**{**fields, "steps": args.steps, "minutes": None})
        start = time.perf_counter()
        result = distill(student, original, train.crops, spec, chosen)
        logits = predict_all(TorchRunner(student, spec, args.threads), val.crops, quiet=True)
        row = {"name": name, **score(logits, val.labels, ref_top1).as_dict(), "settings": chosen.to_dict(),
               "loss_last": round(result.loss_last, 5), "seconds": round(time.perf_counter() - start, 1),
               "model": {"variant": args.variant, "weights": str(args.weights), "act": args.act, "se": args.se},
               "images": {"train": len(train), "val": len(val)}, "machine": machine_info()}
        rows.append(row)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"\n{args.variant} {args.act}, SE {args.se}; {args.steps} steps; {len(train)} training, "
          f"{len(val)} validation images")
    print(f"{'setting':32s} {'top-1':>6s} {'top-5':>6s} {'agree %':>8s} {'s':>6s}")
    for row in rows:
        print(f"{row['name']:32s} {row['top1']:6.2f} {row['top5']:6.2f} {row.get('top1_agreement', 100.0):8.2f} "
              f"{row.get('seconds', ''):>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
