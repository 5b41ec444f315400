#!/usr/bin/env python3
"""Top-1 agreement of each INT8 artifact with its folder's FP32 artifact, on all validation
images and on each half (even / odd file index): a default chosen on one half should hold on the
other, and a difference of one image (0.15 points of 650) is noise.

Runs the artifacts in their own runtimes, as `edgeeff compile` did (a proxy artifact, the Jetson
QDQ model, in ONNX Runtime). Writes JSON and prints a table.

    python scripts/agreement_halves.py out/b0-onnx out/b0-rpi --val VAL [--out halves.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from edgeeff.backends import backend_for_file  # noqa: E402
from edgeeff.data.images import load_validation, resolve_labels  # noqa: E402
from edgeeff.evaluation_cli import spec_from_manifest  # noqa: E402
from edgeeff.report.contract import format_table  # noqa: E402
from edgeeff.scoring import predict_all  # noqa: E402


def top1_of(path: Path, val: Path, threads: int) -> tuple[np.ndarray, np.ndarray]:
    spec = spec_from_manifest(path.parent / "manifest.json", path.name)
    validation = load_validation(val, resolve_labels(None), spec, quiet=True)
    runner = backend_for_file(path).open_runner(path, threads, spec)
    return predict_all(runner, validation.crops, path.name, quiet=True).argmax(1), validation.labels


def halves(folder: Path, val: Path, threads: int) -> list[dict]:
    report = json.loads((folder / "report.json").read_text())
    runnable = [a for a in report["artifacts"] if a.get("top1") is not None]
    fp32 = next(a for a in runnable if a["precision"] == "fp32")
    reference, labels = top1_of(folder / fp32["file"], val, threads)
    rows = []
    for artifact in runnable:
        if artifact["precision"] == "fp32":
            continue
        top1, _ = top1_of(folder / artifact["file"], val, threads)
        same = top1 == reference
        rows.append({"folder": str(folder), "file": artifact["file"], "images": int(len(same)),
                     "agreement": round(float(same.mean() * 100), 2),
                     "agreement_even": round(float(same[0::2].mean() * 100), 2),
                     "agreement_odd": round(float(same[1::2].mean() * 100), 2),
                     "top1": round(float((top1 == labels).mean() * 100), 2),
                     "fp32_top1": round(float((reference == labels).mean() * 100), 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [row for folder in args.folders for row in halves(folder, args.val, args.threads)]
    print(format_table([["folder", "file", "agree%", "even", "odd", "top-1", "fp32 top-1"]] +
                       [[r["folder"], r["file"], f"{r['agreement']:.2f}", f"{r['agreement_even']:.2f}",
                         f"{r['agreement_odd']:.2f}", f"{r['top1']:.2f}", f"{r['fp32_top1']:.2f}"] for r in rows]))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
