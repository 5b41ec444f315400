"""`edgeeff eval ARTIFACT --val DIR`: score any classifier artifact, ours or foreign.

Preprocessing comes from the manifest.json beside the artifact (ours), else from the model's
input signature plus flags (foreign models). A 1001-way output (TF's background class first)
is detected from the output width, or set with --label-offset.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from .backends import backend_for_file
from .data.images import labels_beside, load_validation, resolve_labels
from .data.preprocess import PreprocessSpec
from .errors import UserError
from .models.family import IMAGENET_MEAN, IMAGENET_STD
from .pipeline import check_threads
from .report.contract import format_table
from .scoring import align_classes, latency_in_turns, predict_all, score
from .util import usable_cpus


def spec_from_manifest(manifest_path, artifact_name: str) -> PreprocessSpec:
    try:
        manifest = json.loads(manifest_path.read_text())
        spec = PreprocessSpec.from_dict(manifest["preprocess"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"--manifest {manifest_path}: not an edgeeff manifest ({err}); "
                        f"pass the preprocessing with --resolution/--mean/--std instead") from None
    for entry in manifest.get("artifacts", []):
        if entry.get("file") == artifact_name and entry.get("input"):
            spec = spec.with_layout(entry["input"]["layout"], entry["input"]["dtype"])
    return spec


def spec_from_flags(args, inspected: dict) -> tuple[PreprocessSpec, list[str]]:
    notes = []
    resolution = args.resolution or inspected.get("resolution")
    if not resolution:
        raise UserError(f"{args.artifact}: its input size is dynamic and there is no manifest.json: "
                        f"pass --resolution N")
    if args.mean is None or args.std is None:
        notes.append("no manifest.json: assuming ImageNet mean/std (pass --mean/--std if the model differs)")
    spec = PreprocessSpec(resolution=resolution, crop_pct=args.crop_pct or 0.875,
                          interpolation=args.interpolation or "bicubic",
                          mean=tuple(args.mean or IMAGENET_MEAN), std=tuple(args.std or IMAGENET_STD),
                          layout=inspected.get("layout", "NCHW"))
    return spec, notes


def evaluate_artifact(args) -> dict:
    check_threads(args.threads)
    path = args.artifact
    if not path.is_file():
        raise UserError(f"{path}: no such artifact file")
    if args.val is None:
        raise UserError("eval needs --val DIR (an ImageFolder tree of synset or class-name folders, or a "
                        "`path label` list file)")
    backend = backend_for_file(path)
    manifest = args.manifest or (path.parent / "manifest.json")
    notes = []
    if manifest.is_file():
        spec = spec_from_manifest(manifest, path.name)
        if args.resolution or args.mean or args.std:
            notes.append(f"flags override nothing: preprocessing read from {manifest}")
    else:
        if args.manifest:
            raise UserError(f"--manifest {manifest}: no such file")
        spec, notes = spec_from_flags(args, backend.inspect_input(path))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    threads = args.threads or min(2, usable_cpus())  # as compile: never more than this process may use
    # The labels.txt a compile wrote beside the artifact is the model's own class list: no --synsets needed.
    labels = (None if args.synsets else labels_beside(path.parent)) or resolve_labels(args.synsets)
    validation = load_validation(args.val, labels, spec, args.quiet)
    runner = backend.open_runner(path, threads, spec)
    raw = predict_all(runner, validation.crops, path.name, args.quiet)
    logits = align_classes(raw, len(labels.synsets), args.label_offset)
    scores = score(logits, validation.labels)
    latency = timed_latency(path, runner, backend, manifest, validation.crops[0], threads)
    result = {"file": str(path), "runtime": runner.runtime, **scores.as_dict(),
              "images": len(validation), "skipped": len(validation.skipped), "label_source": labels.source,
              "label_offset": raw.shape[1] - logits.shape[1] if args.label_offset is None else args.label_offset,
              "preprocess": runner.spec.to_dict(), "latency_ms": latency}
    ratio = f"{latency['ratio_to_fp32']:.2f}" if "ratio_to_fp32" in latency else "-"
    print(format_table([["artifact", "runtime", "images", "top-1", "top-5", "ms (b1)", "x FP32"],
                        [path.name, runner.runtime, str(len(validation)), f"{scores.top1:.2f}",
                         f"{scores.top5:.2f}", f"{latency['median']:.2f}" + (" (proxy)" if latency.get("proxy") else ""),
                         ratio]]))
    return result


def timed_latency(path, runner, backend, manifest, crop, threads: int) -> dict:
    """Batch-1 latency of the artifact, timed in turns with the FP32 file of the same runtime that
    its manifest lists beside it (so `ratio_to_fp32` compares the two under the same load, as compile
    does); alone, in the same rounds, when there is none (a foreign model, or the FP32 file itself).
    A TensorRT-bound QDQ model run here in ONNX Runtime is a proxy: marked, and given no ratio."""
    entries, target_backend = [], None
    if manifest.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError, AttributeError):
            data = json.loads(manifest.read_text())
            entries, target_backend = data.get("artifacts", []), data.get("backend")
    fp32 = next((path.parent / e["file"] for e in entries
                 if e.get("precision") == "fp32" and e.get("file") != path.name
                 and Path(e.get("file", "")).suffix == path.suffix and (path.parent / e["file"]).is_file()), None)
    runners = {path.name: runner}
    if fp32 is not None:
        runners = {fp32.name: backend.open_runner(fp32, threads, spec_from_manifest(manifest, fp32.name)), **runners}
    latency = latency_in_turns(runners, crop, threads, reference=fp32.name if fp32 else None)[path.name]
    own = next((e for e in entries if e.get("file") == path.name), {})
    if target_backend == "tensorrt" and path.suffix == ".onnx" and own.get("precision") != "fp32":
        latency.pop("ratio_to_fp32", None)
        latency["proxy"] = True
    return latency
