"""report.json (the contract users' CI reads), report.md, manifest.json and the printed table.

Field names follow the design contract; new fields are added, existing ones never renamed.
Percentages are 0-100; a drop is reference minus artifact (positive is worse).
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from ..util import sha256_file, write_json


def library_versions() -> dict:
    names = ["edgeeff", "torch", "onnx", "onnxruntime", "onnxscript", "numpy", "pillow", "openvino",
             "nncf", "ai-edge-litert", "ai-edge-quantizer", "litert-torch", "tensorflow-cpu", "onnx2tf",
             "tensorrt"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    return found


def read_reports(folders: list[Path]) -> list[dict]:
    """report.json of each output folder (or the file itself): `edgeeff report` and `edgeeff sweep`."""
    import json

    from ..errors import UserError

    reports = []
    for folder in folders:
        path = folder / "report.json" if folder.is_dir() else folder
        try:
            reports.append(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"{folder}: no report.json there; pass folders written by `edgeeff compile`") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    return reports


def artifact_row(artifact) -> dict:
    """The report's view of one artifact: the contract's fields first, extras after."""
    row = {"file": artifact["file"], "format": artifact["format"], "precision": artifact["precision"]}
    for key in ("runtime", "top1", "top5", "top1_drop", "top1_agreement", "size_bytes", "latency_ms"):
        if key in artifact:
            row[key] = artifact[key]
    row.update({k: v for k, v in artifact.items() if k not in row})
    return row


def write_manifest(folder: Path, report: dict, labels_file: str, extra_files=()) -> dict:
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"):
        files.append({"file": path.relative_to(folder).as_posix(), "sha256": sha256_file(path),
                      "size_bytes": path.stat().st_size})
    manifest = {
        "variant": report["variant"], "target": report["target"], "backend": report["backend"],
        "preprocess": report["preprocess"],
        "labels": {"file": labels_file, "classes": report["model"]["num_classes"],
                   "output_offset": 0},
        # input: layout and dtype; quantized inputs add scale and zero_point (and output likewise),
        # what a device needs to feed the file and read its logits.
        "artifacts": [{"file": a["file"], "format": a["format"], "precision": a["precision"],
                       "input": a.get("input"), **({"output": a["output"]} if a.get("output") else {}),
                       **({"build": a["build"]} if a.get("build") else {})}
                      for a in report["artifacts"]],
        "files": files,
        "versions": report["versions"],
    }
    write_json(folder / "manifest.json", manifest)
    return manifest


def _fmt(value, digits=2, suffix=""):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


# The artifact table: (key, header in the printed table and report.md, header in report.html), None
# where that renderer leaves the column out. "float layers": INT8 artifacts only, e.g. 6/82 when the
# --max-drop fallback kept 6 in float; report.html shows "verified" instead.
ARTIFACT_COLUMNS = (
    ("artifact", "artifact", "artifact"),
    ("precision", "precision", "precision"),
    ("runtime", "runtime", "runtime"),
    ("top1", "top-1", "top-1"),
    ("top5", "top-5", "top-5"),
    ("top1_drop", "drop", "drop"),
    ("top1_agreement", "agree%", "agreement %"),
    ("top_score_pct", "tie/sat%", "top score tied or saturated %"),
    ("size_mb", "size MB", "size MB"),
    ("latency_ms", "ms (b1)", "latency ms (b1)"),
    ("latency_ratio", "x FP32", "latency x FP32"),
    ("float_layers", "float layers", None),
    ("verified", None, "verified"),
)


def artifact_table(report: dict) -> list[dict]:
    """The artifact table's rows, the FP32 reference first: raw values keyed as ARTIFACT_COLUMNS, plus
    `reference` (True on the reference row) and `reason` (why an artifact was not verified). A key is
    absent where the column does not apply (an empty cell); None is a value not measured ("-").
    The printed table, report.md and report.html all render these rows; they only format them."""
    ref = report["reference"]
    rows = [{"reference": True, "artifact": "reference", "precision": ref["precision"], "runtime": ref["runtime"],
             "top1": ref.get("top1"), "top5": ref.get("top5")}]
    for a in report["artifacts"]:
        row = {"reference": False, "artifact": a["file"], "precision": a["precision"],
               "runtime": a.get("runtime", "-"), "top1": a.get("top1"), "top5": a.get("top5"),
               "top1_drop": a.get("top1_drop"), "top1_agreement": a.get("top1_agreement"),
               "size_mb": a["size_bytes"] / 1e6 if a.get("size_bytes") is not None else None,
               "latency_ms": (a.get("latency_ms") or {}).get("median"),
               "latency_proxy": bool((a.get("latency_ms") or {}).get("proxy")),
               "verified": a.get("verified", True), "reason": a.get("reason", "")}
        if a.get("top_score"):  # share of val images whose top logit ties the runner-up or saturates
            row["top_score_pct"] = a["top_score"]["saturated_or_tied_pct"]
        if a["precision"] != "fp32" and a.get("latency_ms"):
            # the same runtime's FP32 file timed in turns with it; none for a proxy (not the device)
            row["latency_ratio"] = a["latency_ms"].get("ratio_to_fp32")
        if "kept_float" in a:
            row["float_layers"] = f"{len(a['kept_float'])}/{a['quantizable_layers']}"
        rows.append(row)
    return rows


def _text_cell(row: dict, key: str) -> str:
    if key not in row:
        return ""
    if key == "runtime" and not row.get("verified", True):
        return "not run"  # the text table has no "verified" column
    if key == "latency_ms" and row.get("latency_proxy"):
        return f"{_fmt(row[key])} (proxy)"
    return _fmt(row[key])


def table_rows(report: dict) -> list[list[str]]:
    """The artifact table as text cells, header first: the printed table and report.md."""
    columns = [(key, header) for key, header, _ in ARTIFACT_COLUMNS if header is not None]
    return [[header for _, header in columns]] + [[_text_cell(row, key) for key, _ in columns]
                                                  for row in artifact_table(report)]


RANDOM_WEIGHTS_NOTE = ("random weights (--random-weights): top-1, drop and agreement compare a random network "
                       "with its own INT8 copy and mean nothing for a trained model; size and latency are real")


def weights_note(report: dict) -> str | None:
    """What the table's accuracy columns are worth when the weights were random, else None."""
    return RANDOM_WEIGHTS_NOTE if report.get("model", {}).get("weights", {}).get("source") == "random" else None


def table_text(report: dict) -> str:
    """The printed artifact table, with the random-weights note under it when it applies."""
    note = weights_note(report)
    return format_table(table_rows(report)) + (f"\nnote: {note}" if note else "")


def chain_rows(report: dict) -> list[list[str]]:
    """The variant chain (original -> variant -> recovered -> artifacts on the target), or []."""
    chain = report.get("variant_chain")
    if not chain:
        return []
    rows = [["stage", "act", "SE", "precision", "top-1", "top-5", "drop", "agree% (vs original)",
             f"drop vs {chain[-1]['stage']}", f"agree% vs {chain[-1]['stage']}"]]
    for entry in chain:
        rows.append([entry["stage"], entry["act"], entry["se"], "fp32", _fmt(entry.get("top1")),
                     _fmt(entry.get("top5")), _fmt(entry.get("top1_drop")), _fmt(entry.get("top1_agreement")),
                     "", ""])
    last = chain[-1]
    for a in report["artifacts"]:
        own = a.get("top1_vs_variant") or {}
        rows.append([f"{last['stage']} {a['file']}", last["act"], last["se"], a["precision"], _fmt(a.get("top1")),
                     _fmt(a.get("top5")), _fmt(a.get("top1_drop")), _fmt(a.get("top1_agreement")),
                     _fmt(own.get("drop")), _fmt(own.get("agreement"))])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> list[str]:
    """A header row and its data rows as Markdown table lines."""
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def scale_groups_summary(info: dict | None) -> str:
    """The INT8 scale groups (scale_groups.py) of the exported graph, in a sentence."""
    if not info or info["setting"] == "off":
        return "off (one INT8 scale per activation tensor)"
    if not info["sites"]:
        return "auto, no site worth splitting (every tensor keeps one INT8 scale)"
    sites = "; ".join(f"{s['site']}: {' + '.join(map(str, s['channels']))} channels, ranges up to "
                      f"{' and '.join(map(str, s['group_widths']))}, relative INT8 noise {s['noise_gain']}x lower"
                      for s in info["sites"])
    n = len(info["sites"])
    return f"{n} site{'s' if n > 1 else ''} split into two INT8 scales each (exact in float): {sites}"


def markdown(report: dict) -> str:
    rows = table_rows(report)
    md = [f"# edgeeff report: {report['variant']} for {report['target']} ({report['backend']})", ""]
    if not report.get("accuracy_measured", True):
        md += ["**Accuracy was not measured**: no `--val` folder was given. Only size and latency "
               "below are measurements.", ""]
    if weights_note(report):
        md += [f"**Note**: {weights_note(report)}.", ""]
    md += markdown_table(rows)
    pre, cal, data = report["preprocess"], report["calibration"], report["dataset"]
    chain = chain_rows(report)
    if chain:
        surgery = report["model"].get("surgery", {})
        md += ["", "## Variant chain", "",
               f"The reference is the original model ({surgery.get('from', {}).get('act')}, SE "
               f"{surgery.get('from', {}).get('se')}); the artifacts are the variant "
               f"({surgery.get('act')}, SE {surgery.get('se')}). Drops and agreement are against the original; the "
               f"last two columns, against the FP32 variant the artifacts were made from.", ""]
        md += markdown_table(chain)
        if surgery.get("se_blocks"):
            md += ["", f"- SE blocks: {', '.join(f'{n} {k}' for k, n in surgery['se_blocks'].items())} "
                       f"(largest per-channel gate std over the calibration images: {surgery.get('se_gate_std_max')})"]
        rec = report.get("recovery")
        if rec:
            s_ = rec["settings"]
            md += [f"- recovery: distillation, {rec['steps_done']} of {rec['steps_planned']} steps"
                   f"{' (planned from the time budget)' if rec.get('planned_from_time') else ''}"
                   f"{', cut short by the time budget' if rec.get('stopped_by_time') else ''} in {rec['seconds']} s "
                   f"on {rec['images']} images of {rec['path']}; batch {s_['batch']}, lr {s_['lr']}, "
                   f"T {s_['temperature']}, augment {s_['augment']}, BN frozen {s_['freeze_bn']}, seed {s_['seed']}; "
                   f"KD loss {rec['loss_first']} -> {rec['loss_last']}; weights in `{rec['file']}`"
                   + (f"; reproduce with `{rec['reproduce']}`" if rec.get("reproduce") else "")]
    fb = report.get("fallback")
    if fb:
        verdict = "Within budget" if fb["met"] else f"**Not within budget** at the limit of {fb['limit']} layers"
        kept_as = fb.get("kept_precision", "float")  # LiteRT keeps layers at a16w8, not float
        where = "in float" if kept_as == "float" else f"at {kept_as}"
        md += ["", f"## --max-drop {fb['max_drop']} fallback", "",
               f"{verdict} (judged by the top-1 {fb['metric']}). Kept {where}: "
               f"{', '.join(f'`{n}`' for n in fb['kept_float']) or 'none'}.", "",
               f"| layers {where} | top-1 | drop | agreement % |", "|---|---|---|---|"]
        md += [f"| {s['kept_float']} | {s['top1']} | {s['top1_drop']} | {s['top1_agreement']} |" for s in fb["steps"]]
        if fb.get("all_int8", {}).get("latency_ms") is not None:
            md.append(f"\nAll-INT8 before the fallback: {fb['all_int8']['size_bytes']} bytes, "
                      f"{fb['all_int8']['latency_ms']} ms median.")
    sens = report.get("sensitivity")
    if sens:
        md += ["", "## Per-layer sensitivity (10 most sensitive)", "",
               f"Each layer quantized alone in {sens['backend']}; logits SQNR against FP32 on "
               f"{sens['calibration_images']} calibration images (all quantized: {sens['all_quantized_sqnr_db']} dB).", "",
               "| rank | layer | kind | SQNR dB | agreement alone % |", "|---|---|---|---|---|"]
        md += [f"| {r['rank']} | {r['layer']} | {r['kind']} | {r['sqnr_db']} | {r.get('top1_agreement_alone', '-')} |"
               for r in sens["layers"][:10]]
    md += ["", "Drop = reference top-1 minus artifact top-1 (positive is worse). Agreement = share of "
           "validation images whose top-1 class matches the FP32 reference.", "",
           "## Preprocessing (the same for calibration, validation and the device)", "",
           f"- RGB, resize shorter side to {pre['resize_size']} ({pre['interpolation']}), centre crop "
           f"{pre['resolution']} (crop_pct {pre['crop_pct']})",
           f"- scale to [0, 1], mean {pre['mean']}, std {pre['std']}, layout {pre['layout']}", "",
           "## Calibration", "",
           f"- {cal['images']} images from {cal['source']}, method `{cal['method']}`"
           + (f", {cal['skipped']} unreadable skipped" if cal.get("skipped") else ""),
           f"- scale groups: {scale_groups_summary(report.get('scale_groups'))}", "",
           "## Validation", ""]
    if data.get("path"):
        md.append(f"- {data['images']} images in {data['classes']} classes from {data['path']}"
                  + (f", {data['skipped']} unreadable skipped" if data.get("skipped") else ""))
    else:
        md.append("- none: accuracy not measured")
    for a in report["artifacts"]:
        if a.get("verified_by") or not a.get("verified", True):
            md.append(f"- `{a['file']}`: " + (a.get("verified_by") or a.get("reason", "")))
    md += ["", "## Stage timings (s)", ""] + [f"- {k}: {v}" for k, v in report.get("timings_s", {}).items()]
    return "\n".join(md) + "\n"



# What differs between two compiles of the same inputs: wall times, memory, latency, cache hits.
RUN_DEPENDENT_FIELDS = {"timings_s", "peak_rss_mb"}


def comparable(report: dict) -> dict:
    """report.json without what legitimately differs between two runs of the same compile (timings,
    memory, latency, whether the cache was hit, the sensitivity's seconds): what a sweep cell and a
    separate compile must agree on (tests/test_sweep.py, scripts/bench_sweep.py)."""
    report = {k: v for k, v in report.items() if k not in RUN_DEPENDENT_FIELDS}
    report["reference"] = {k: v for k, v in report["reference"].items() if k != "cached"}
    report["artifacts"] = [{k: ({q: x for q, x in v.items() if q != "calibration_stats_cached"}
                                if k == "quantization" else v) for k, v in a.items() if k != "latency_ms"}
                           for a in report["artifacts"]]
    if "sensitivity" in report:
        report["sensitivity"] = {k: v for k, v in report["sensitivity"].items() if k != "seconds"}
    return report
