"""Batch-1 latency of model files from edgeeff output folders, timed in turns in one process.

Each file is run in its own runtime (backend by suffix, preprocessing from the manifest.json
beside it) on one crop of a calibration photo, in rounds of a few runs per file
(research/scale_group_sweep.latency_in_turns), so this shared host's drift in speed hits every
file alike. Prints each file's median and p90 and its ratio to the first file's median; --json
writes them. E.g. the all-INT8 file against the --max-drop file with layers at a16w8:

    python scripts/latency_in_turns.py ALL_INT8/b0-rpi/model_int8.tflite FALLBACK/b0-rpi/model_int8.tflite
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "research"))

from scale_group_sweep import latency_in_turns  # noqa: E402

from edgeeff.backends import backend_for_file  # noqa: E402
from edgeeff.data.images import load_calibration  # noqa: E402
from edgeeff.evaluation_cli import spec_from_manifest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200, help="runs per file, spread over the rounds")
    parser.add_argument("--calib", type=Path, default=None, help="photo folder (default: the packaged photos)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runners, crop = [], None
    for path in args.files:
        spec = spec_from_manifest(path.parent / "manifest.json", path.name)
        if crop is None:
            crop = load_calibration(args.calib, 1, spec, quiet=True).crops[0]
        runners.append(backend_for_file(path).open_runner(path, args.threads, spec))
    results = latency_in_turns(runners, crop, args.runs)
    first = results[0]["median"]
    rows = [{"file": str(path), **r, "ratio_to_first": round(r["median"] / first, 3), "threads": args.threads}
            for path, r in zip(args.files, results)]
    for row in rows:
        print(f"{row['median']:9.3f} ms median  {row['p90']:9.3f} p90  x{row['ratio_to_first']:.3f}  {row['file']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
