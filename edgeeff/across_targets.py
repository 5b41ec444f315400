"""Commands that run several compiles and compare them: `edgeeff sensitivity` across targets.

Beside the pipeline, not under quant/: each target is a whole `compile` (its own artifacts in its own
runtime), and this module only orders them and puts their per-layer rankings side by side.
"""

from __future__ import annotations

from pathlib import Path

from .errors import AccuracyGateError, UserError
from .pipeline import compile_model
from .progress import say
from .report.html_page import sensitivity_page
from .util import write_json


def comparison_rows(reports: list[dict]) -> tuple[list[str], list[dict]]:
    """One row per layer (graph order of the first target that has it): SQNR and rank per target."""
    targets, by_target, order = [], {}, []
    for report in reports:
        sens = report.get("sensitivity")
        if not sens:
            continue
        targets.append(report["target"])
        by_target[report["target"]] = {row["layer"]: row for row in sens["layers"]}
        for row in sorted(sens["layers"], key=lambda r: r.get("position", 0)):
            if row["layer"] not in order:
                order.append(row["layer"])
    rows = []
    for name in order:
        first = next(by_target[t][name] for t in targets if name in by_target[t])
        row = {"layer": name, "kind": first["kind"], "position": first.get("position")}
        for t in targets:
            entry = by_target[t].get(name)
            row[t] = {"sqnr_db": entry["sqnr_db"], "rank": entry["rank"]} if entry else None
        values = [row[t]["sqnr_db"] for t in targets if row[t]]
        # A layer fine on one backend and poor on another points at that converter, not the model.
        row["spread_db"] = round(max(values) - min(values), 2) if len(values) > 1 else None
        rows.append(row)
    return targets, rows


def comparison_markdown(variant: str, targets: list[str], rows: list[dict], worst: int = 15) -> str:
    lines = [f"# Per-layer quantization sensitivity: {variant}", "",
             "Logits SQNR against FP32 (dB, higher is better) with only that layer quantized, in each "
             "target's own INT8 artifact and runtime. Rank 1 = most sensitive on that target. "
             "`spread` is the largest difference between targets: a layer fine in one and poor in "
             "another points at the converter, not the model.", ""]
    header = ["layer", "kind"] + [f"{t} dB (rank)" for t in targets] + ["spread dB"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    key = lambda r: min((r[t]["sqnr_db"] for t in targets if r[t]), default=float("inf"))  # noqa: E731
    for row in sorted(rows, key=key)[:worst]:
        cells = [row["layer"], row["kind"]] + [
            f"{row[t]['sqnr_db']:.1f} ({row[t]['rank']})" if row[t] else "-" for t in targets]
        cells.append(f"{row['spread_db']:.1f}" if row["spread_db"] is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{len(rows)} layers; the {min(worst, len(rows))} most sensitive on any target are shown. "
              "All of them: sensitivity.json.", ""]
    return "\n".join(lines)


def compare_targets(args, targets: list[str], make_options) -> Path:
    if args.val is None:
        raise UserError("edgeeff sensitivity needs --val DIR: the worst layers are also scored on validation images")
    if not targets:
        raise UserError("--targets: name at least one target, e.g. --targets onnx,intel")
    reports, gate_failures = [], []
    for target in targets:
        say(f"== {target}")
        try:
            _folder, report = compile_model(make_options(args, target, sensitivity=True))
        except AccuracyGateError as err:  # the report is written: compare it too, fail at the end
            report = err.report
            gate_failures.append(str(err))
        reports.append(report)
    missing = [r["target"] for r in reports if not r.get("sensitivity")]
    if missing:
        say(f"note: no per-layer analysis for {', '.join(missing)}: its backend cannot keep layers at higher "
            f"precision (docs/sensitivity.md)")
    names, rows = comparison_rows(reports)
    out = Path(args.out) / f"{args.variant}-sensitivity"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sensitivity.json", {"variant": args.variant, "targets": names, "layers": rows,
                                          "per_target": {r["target"]: r["sensitivity"] for r in reports
                                                         if r.get("sensitivity")}})
    text = comparison_markdown(args.variant, names, rows)
    (out / "sensitivity.md").write_text(text)
    (out / "sensitivity.html").write_text(sensitivity_page(args.variant, names, rows))
    print(text)
    print(f"wrote {out}/ (sensitivity.json, sensitivity.md, sensitivity.html)")
    if gate_failures:
        raise AccuracyGateError("; ".join(gate_failures))
    return out
