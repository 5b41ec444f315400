"""report.html: one self-contained page (inline SVG charts, no scripts, no network).

Charts: top-1 of each artifact against the FP32 reference, latency, size. Used for a single
compile (beside report.json) and by `edgeeff report` to compare several output folders.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

PALETTE = {"fp32": "#5b7db1", "fp16": "#8fb35b", "int8": "#d9822b", "reference": "#7f7f7f"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem} th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} .warn{background:#fff4e5;border:1px solid #f0b46c;padding:.6rem;border-radius:4px}
.bad{color:#b00020;font-weight:600} .charts{display:flex;flex-wrap:wrap;gap:1.5rem} figure{margin:0}
figcaption{font-size:.85rem;color:#555} .thumbs{display:flex;flex-wrap:wrap;gap:.4rem}
figure.thumb{width:96px;font-size:.7rem} figure.thumb figcaption{font-size:.65rem;overflow-wrap:anywhere} dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;font-size:.9rem} dt{font-weight:600}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def bar_chart(title: str, bars: list[tuple[str, float | None, str]], unit: str, reference: float | None = None,
              width: int = 520, lo: float | None = None) -> str:
    """Horizontal bars: (label, value, colour). A dashed line marks the reference value."""
    shown = [b for b in bars if b[1] is not None]
    if not shown:
        return f"<figure><figcaption>{_esc(title)}: not measured</figcaption></figure>"
    label_w, row_h, pad = 190, 26, 16
    height = pad * 2 + row_h * len(bars) + 22
    values = [v for _, v, _ in shown] + ([reference] if reference is not None else [])
    top = max(values) * 1.05 or 1.0
    low = lo if lo is not None else 0.0
    span = max(top - low, 1e-9)
    plot_w = width - label_w - 70

    def x(v):
        return label_w + max(0.0, (v - low) / span) * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_esc(title)}" font-family="system-ui,sans-serif" font-size="12">']
    for i, (label, value, colour) in enumerate(bars):
        y = pad + i * row_h
        parts.append(f'<text x="{label_w - 6}" y="{y + 17}" text-anchor="end">{_esc(label)}</text>')
        if value is None:
            parts.append(f'<text x="{label_w + 4}" y="{y + 17}" fill="#888">not run here</text>')
            continue
        parts.append(f'<rect x="{label_w}" y="{y + 4}" width="{x(value) - label_w:.1f}" height="{row_h - 8}" '
                     f'fill="{colour}"><title>{_esc(label)}: {value:.2f} {unit}</title></rect>')
        parts.append(f'<text x="{x(value) + 4:.1f}" y="{y + 17}">{value:.2f}</text>')
    axis_y = pad + row_h * len(bars) + 4
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#999"/>')
    parts.append(f'<text x="{label_w}" y="{axis_y + 15}" fill="#555">{low:g}</text>')
    parts.append(f'<text x="{label_w + plot_w}" y="{axis_y + 15}" text-anchor="end" fill="#555">{top:.1f} {unit}</text>')
    if reference is not None:
        rx = x(reference)
        parts.append(f'<line x1="{rx:.1f}" y1="{pad}" x2="{rx:.1f}" y2="{axis_y}" stroke="#333" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{rx:.1f}" y="{pad - 4}" text-anchor="middle" font-size="10">FP32 reference</text>')
    parts.append("</svg>")
    return f"<figure>{''.join(parts)}<figcaption>{_esc(title)}</figcaption></figure>"


def _cell(value, digits=2):
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else _esc(value)


_LEFT = ("artifact", "precision", "runtime")  # text columns, left-aligned


def _artifact_cell(row: dict, key: str, max_drop: float | None) -> str:
    if key not in row:
        return "<td></td>"
    value = row[key]
    if key == "artifact" and row["reference"]:
        return '<td class="l">FP32 reference</td>'
    if key in _LEFT:
        return f'<td class="l">{_esc(value)}</td>'
    if key == "verified":
        return f"<td>{'yes' if value else 'no: ' + _esc(row['reason'])}</td>"
    if key == "latency_ms" and row.get("latency_proxy"):
        return f'<td title="a proxy run on this host, not the device">{_cell(value)} (proxy)</td>'
    if key == "top1_drop":
        over = max_drop is not None and value is not None and value > max_drop
        return f'<td class="{"bad" if over else ""}">{_cell(value)}</td>'
    return f"<td>{_cell(value)}</td>"


def _artifact_table(reports: list[dict], max_drop: float | None) -> str:
    """contract.py's artifact_table rows for each report (one folder column when several), as HTML."""
    from .contract import ARTIFACT_COLUMNS, artifact_table

    many = len(reports) > 1
    columns = [(key, header) for key, _, header in ARTIFACT_COLUMNS if header is not None]
    head = (["folder"] if many else []) + [header for _, header in columns]
    rows = ["<tr>" + "".join(f'<th class="{"l" if i < (3 if many else 2) else ""}">{h}</th>'
                             for i, h in enumerate(head)) + "</tr>"]
    for report in reports:
        name = f"{report['variant']}-{report['target']}"
        for row in artifact_table(report):
            rows.append("<tr>" + (f'<td class="l">{_esc(name)}</td>' if many else "")
                        + "".join(_artifact_cell(row, key, max_drop) for key, _ in columns) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


SERIES = ["#d9822b", "#5b7db1", "#8fb35b", "#a05195", "#7f7f7f"]


def line_chart(title: str, series: list[tuple[str, list[float | None]]], labels: list[str], unit: str,
               width: int = 1000, height: int = 300) -> str:
    """Values per layer in graph order, one line (and dots) per series; hover a dot for the layer."""
    values = [v for _, vs in series for v in vs if v is not None and v != float("inf")]
    if not values or not labels:
        return f"<figure><figcaption>{_esc(title)}: not measured</figcaption></figure>"
    left, right, top_pad, bottom = 50, 20, 20, 40
    lo, hi = min(values), max(values)
    lo, hi = (lo - 1, hi + 1) if hi == lo else (lo, hi)
    plot_w, plot_h = width - left - right, height - top_pad - bottom

    def xy(i, v):
        x = left + (i / max(1, len(labels) - 1)) * plot_w
        return x, top_pad + (1 - (v - lo) / (hi - lo)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_esc(title)}" font-family="system-ui,sans-serif" font-size="11">',
             f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#999"/>',
             f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="#999"/>',
             f'<text x="{left - 4}" y="{top_pad + 4}" text-anchor="end">{hi:.0f}</text>',
             f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end">{lo:.0f}</text>',
             f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">layer (graph order, input to '
             f'classifier); {_esc(unit)}</text>']
    for k, (name, vs) in enumerate(series):
        colour = SERIES[k % len(SERIES)]
        points = [(i, v) for i, v in enumerate(vs) if v is not None and v != float("inf")]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in points))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.2" opacity="0.8"/>')
        for i, v in points:
            x, y = xy(i, v)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                         f'<title>{_esc(name)}: {_esc(labels[i])} {v:.1f} {_esc(unit)}</title></circle>')
        parts.append(f'<rect x="{left + 10 + 130 * k}" y="{top_pad - 14}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{left + 24 + 130 * k}" y="{top_pad - 5}">{_esc(name)}</text>')
    parts.append("</svg>")
    return f"<figure>{''.join(parts)}<figcaption>{_esc(title)}</figcaption></figure>"


def _table(header: list[str], rows: list[list], left_cols: int = 1) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f'<td class="l">{_esc(c)}</td>' if i < left_cols else f"<td>{_esc(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sensitivity_section(report: dict) -> str:
    sens = report.get("sensitivity")
    if not sens:
        return ""
    layers = sorted(sens["layers"], key=lambda r: r["position"])
    chart = line_chart("Logits SQNR (dB) with only that layer quantized: low = sensitive",
                       [(report["target"], [r["sqnr_db"] for r in layers])], [r["layer"] for r in layers], "dB")
    worst = [[r["rank"], r["layer"], r["kind"], f"{r['sqnr_db']:.2f}", _cell(r.get("top1_agreement_alone"))]
             for r in sens["layers"][:10]]
    return ("<h3>Per-layer sensitivity</h3>"
            f"<p>{sens['quantizable_layers']} layers, each quantized alone in {_esc(sens['backend'])} "
            f"(all others float), SQNR of the logits against FP32 on {sens['calibration_images']} calibration "
            f"images; all layers quantized: {sens['all_quantized_sqnr_db']} dB. Agreement alone: top-1 agreement "
            f"with FP32 on {sens['validation_images_for_agreement']} validation images.</p>" + chart
            + _table(["rank", "layer", "kind", "SQNR dB", "agreement alone %"], worst, left_cols=3))


def _fallback_section(report: dict) -> str:
    fb = report.get("fallback")
    if not fb:
        return ""
    steps = [[s["kept_float"], _cell(s["top1"]), _cell(s["top1_drop"]), _cell(s["top1_agreement"])]
             for s in fb["steps"]]
    verdict = ("within budget" if fb["met"] else
               f'<span class="bad">not within budget after {fb["limit"]} layers (the limit)</span>')
    kept = ", ".join(fb["kept_float"]) or "none"
    return (f"<h3>--max-drop {fb['max_drop']} fallback: {verdict}</h3>"
            f"<p>Judged by the top-1 {_esc(fb['metric'])} (points). Kept in float: {_esc(kept)}.</p>"
            + _table(["layers in float", "top-1", "drop", "agreement %"], steps))


def _per_class_section(report: dict) -> str:
    """Top-1 per validation class (report.json `per_class`, at most PER_CLASS_LIMIT classes): the FP32
    reference and every artifact; a cell below the reference's is marked."""
    per_class = report.get("per_class")
    if not per_class or not per_class.get("classes"):
        return ""
    keys = list(per_class["classes"][0]["top1"])
    head = "".join(f"<th>{_esc('FP32 reference' if k == 'reference' else k)}</th>" for k in keys)
    rows = []
    for c in per_class["classes"]:
        ref = c["top1"].get("reference")
        cells = "".join(f'<td class="{"bad" if k != "reference" and ref is not None and v < ref else ""}">'
                        f"{v:.1f}</td>" for k, v in c["top1"].items())
        rows.append(f'<tr><td class="l">{c["index"]}</td><td class="l">{_esc(c["name"])}</td>'
                    f"<td>{c['images']}</td>{cells}</tr>")
    return ("<h3>Top-1 per class (%)</h3><p>Each validation class's top-1 for the FP32 reference and every "
            "artifact; red: below the reference.</p>"
            f'<table><thead><tr><th class="l">class</th><th class="l">name</th><th>images</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _changed_section(report: dict) -> str:
    """Thumbnails of the validation images whose top-1 an artifact changed (artifacts[].top1_changed),
    at most THUMBS_SHOWN per artifact, captioned reference class -> artifact class."""
    from .thumbnails import THUMB_PX, THUMBS_SHOWN, thumbnail_uri

    parts = []
    for a in report["artifacts"]:
        changed = a.get("top1_changed")
        if not changed or not changed.get("count"):
            continue
        files = changed["files"][:THUMBS_SHOWN]
        refs, tops = changed.get("reference_top1", []), changed.get("top1", [])
        figures, missing = [], 0
        for i, path in enumerate(files):
            uri = thumbnail_uri(path, report["preprocess"])
            if uri is None:
                missing += 1
                continue
            caption = f"{refs[i]} -> {tops[i]}" if i < len(refs) and i < len(tops) else Path(path).name
            figures.append(f'<figure class="thumb"><img src="{uri}" width="{THUMB_PX}" height="{THUMB_PX}" '
                           f'alt="{_esc(Path(path).name)}" title="{_esc(path)}: {_esc(caption)}">'
                           f"<figcaption>{_esc(caption)}</figcaption></figure>")
        shown = len(figures)
        note = (f"{changed['count']} images changed; the first {shown} shown"
                + (f", {missing} not readable here" if missing else "") + ". Caption: FP32 reference's class -> "
                "this artifact's.")
        parts.append(f"<h3>{_esc(a['file'])}: top-1 changed</h3><p>{_esc(note)}</p>"
                     f'<div class="thumbs">{"".join(figures)}</div>')
    return "".join(parts)


def sensitivity_page(variant: str, targets: list[str], rows: list[dict]) -> str:
    """`edgeeff sensitivity`: one chart with a line per target, and the worst layers' table."""
    series = [(t, [r[t]["sqnr_db"] if r[t] else None for r in rows]) for t in targets]
    chart = line_chart("Logits SQNR (dB) per layer, only that layer quantized, per target", series,
                       [r["layer"] for r in rows], "dB")
    key = lambda r: min((r[t]["sqnr_db"] for t in targets if r[t]), default=float("inf"))  # noqa: E731
    table = _table(["layer", "kind"] + [f"{t} dB (rank)" for t in targets] + ["spread dB"],
                   [[r["layer"], r["kind"]] + [f"{r[t]['sqnr_db']:.1f} ({r[t]['rank']})" if r[t] else "-"
                                              for t in targets] + [_cell(r["spread_db"], 1)]
                    for r in sorted(rows, key=key)[:20]], left_cols=2)
    title = f"edgeeff: per-layer sensitivity of {variant}"
    body = (f"<h1>{_esc(title)}</h1><p>Each layer quantized alone in each target's own INT8 artifact and runtime; "
            "SQNR of the logits against FP32. A layer fine on one target and poor on another points at that "
            "converter, not the model.</p>" + chart + "<h2>Most sensitive layers</h2>" + table)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def _charts(reports: list[dict]) -> str:
    many = len(reports) > 1
    top1, latency, size = [], [], []
    reference = reports[0]["reference"].get("top1") if not many else None
    for report in reports:
        prefix = f"{report['variant']}-{report['target']}: " if many else ""
        if many:
            top1.append((prefix + "FP32 reference", report["reference"].get("top1"), PALETTE["reference"]))
        for a in report["artifacts"]:
            colour = PALETTE.get(a["precision"], "#999")
            label = prefix + a["file"]
            top1.append((label, a.get("top1"), colour))
            latency.append((label, (a.get("latency_ms") or {}).get("median"), colour))
            if a.get("size_bytes") is not None:
                size.append((label, a["size_bytes"] / 1e6, colour))
    measured = [v for _, v, _ in top1 if v is not None] + ([reference] if reference is not None else [])
    lo = max(0.0, (min(measured) - 5) // 5 * 5) if measured else 0.0
    return ('<div class="charts">'
            + bar_chart("Top-1 (%) per artifact; dashed line: FP32 reference", top1, "%", reference, lo=lo)
            + bar_chart("Latency, median ms at batch 1", latency, "ms")
            + bar_chart("Size (MB)", size, "MB") + "</div>")


def scatter_chart(title: str, points: list[tuple[str, float, float, str]], x_unit: str, y_unit: str,
                  width: int = 480, height: int = 300) -> str:
    """One dot per (label, x, y, colour), labelled; hover a dot for its values."""
    if not points:
        return f"<figure><figcaption>{_esc(title)}: not measured</figcaption></figure>"
    left, right, top_pad, bottom = 50, 20, 20, 40
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    x_lo, x_hi = 0.0, max(xs) * 1.1 or 1.0
    y_lo, y_hi = min(ys), max(ys)
    y_lo, y_hi = (y_lo - 1, y_hi + 1) if y_hi - y_lo < 2 else (y_lo - 0.5, y_hi + 0.5)
    plot_w, plot_h = width - left - right, height - top_pad - bottom

    def xy(x, y):
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w, top_pad + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_esc(title)}" font-family="system-ui,sans-serif" font-size="11">',
             f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#999"/>',
             f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="#999"/>',
             f'<text x="{left - 4}" y="{top_pad + 4}" text-anchor="end">{y_hi:.1f}</text>',
             f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end">{y_lo:.1f}</text>',
             f'<text x="{left + plot_w}" y="{top_pad + plot_h + 14}" text-anchor="end">{x_hi:.1f}</text>',
             f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{_esc(x_unit)} '
             f'(y: {_esc(y_unit)})</text>']
    for label, x, y, colour in points:
        px, py = xy(x, y)
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{colour}"><title>{_esc(label)}: '
                     f'{x:.2f} {_esc(x_unit)}, {y:.2f} {_esc(y_unit)}</title></circle>'
                     f'<text x="{px + 6:.1f}" y="{py - 6:.1f}">{_esc(label)}</text>')
    parts.append("</svg>")
    return f"<figure>{''.join(parts)}<figcaption>{_esc(title)}</figcaption></figure>"


def sweep_section(matrix: list[list[str]], points: dict[str, list[tuple[str, float, float]]],
                  failed: list[dict]) -> str:
    """`edgeeff sweep`'s matrix (model x target), one chart per target of INT8 agreement against
    latency (`points`: target -> (model, latency ms, agreement %), one dot per model, the same
    colour for a model on every chart), and the failed cells with their one line."""
    models = list(dict.fromkeys(label for dots in points.values() for label, _, _ in dots))
    charts = "".join(scatter_chart(f"{target}: INT8 agreement with FP32 vs median latency",
                                   [(label, x, y, SERIES[models.index(label) % len(SERIES)]) for label, x, y in dots],
                                   "latency, ms at batch 1", "agreement %")
                     for target, dots in points.items())
    failures = ("<h2>Failed cells</h2><ul>" + "".join(
        f"<li>{_esc(r['cell'])}: {_esc(r['message'])}</li>" for r in failed) + "</ul>") if failed else ""
    return ("<h2>Matrix</h2>" + _table(matrix[0], matrix[1:])
            + "<p>INT8 top-1 agreement with the FP32 reference (%) / median latency at batch 1 (ms). Latency was "
              "timed while other cells ran.</p>" + failures
            + "<h2>Agreement vs latency per target</h2>" + f'<div class="charts">{charts}</div>')


def _details(report: dict) -> str:
    from .contract import scale_groups_summary

    pre, cal, data = report["preprocess"], report["calibration"], report["dataset"]
    items = [
        ("Preprocessing", f"RGB; resize shorter side to {pre['resize_size']} ({pre['interpolation']}); centre crop "
                          f"{pre['resolution']}; [0, 1] then mean {pre['mean']}, std {pre['std']}; {pre['layout']}"),
        ("Calibration", f"{cal['images']} images from {cal['path']} ({cal['source']}); method {cal['method']}"
                        + (f"; {cal['skipped']} unreadable skipped" if cal.get("skipped") else "")),
        ("Scale groups", scale_groups_summary(report.get("scale_groups"))),
        ("Validation", f"{data['images']} images, {data['classes']} classes from {data['path']}"
                       if data.get("path") else "none: accuracy not measured"),
        ("Model", f"{report['model'].get('variant')} act={report['model'].get('act')} se={report['model'].get('se')}, "
                  f"{report['model'].get('parameters', 0) / 1e6:.2f}M parameters; weights {report['model']['weights']['source']}"),
        ("Stage timings (s)", ", ".join(f"{k} {v}" for k, v in report.get("timings_s", {}).items())),
    ]
    return "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items) + "</dl>"


def _chain_table(report: dict) -> str:
    from .contract import chain_rows

    rows = chain_rows(report)
    if not rows:
        return ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f'<td class="l">{_esc(c)}</td>' if i < 4 else f"<td>{_esc(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows[1:])
    return ("<h3>Variant chain (drops and agreement against the original model; the last two columns "
            "against the FP32 variant the artifacts were made from)</h3>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def render(reports: list[dict], title: str | None = None, max_drop: float | None = None, extra: str = "") -> str:
    """The page for one or several reports; `extra`: HTML placed after the title (a sweep's matrix)."""
    single = len(reports) == 1
    title = title or (f"edgeeff: {reports[0]['variant']} for {reports[0]['target']}" if single
                      else f"edgeeff: {len(reports)} builds compared")
    body = [f"<h1>{_esc(title)}</h1>", extra]
    if any(not r.get("accuracy_measured", True) for r in reports):
        body.append('<p class="warn">Accuracy was not measured for builds compiled without <code>--val</code>: '
                    'only size and latency there are measurements.</p>')
    body += ["<h2>Summary</h2>", _artifact_table(reports, max_drop),
             "<p>Drop = FP32 reference top-1 minus artifact top-1 (positive is worse). Agreement = share of "
             "validation images whose top-1 matches the FP32 reference.</p>",
             "<h2>Charts</h2>", _charts(reports)]
    for report in reports:
        if not single:
            body.append(f"<h2>{_esc(report['variant'])}-{_esc(report['target'])}</h2>")
        else:
            body.append("<h2>Details</h2>")
        body.append(_chain_table(report))
        body.append(_fallback_section(report))
        body.append(_sensitivity_section(report))
        body.append(_per_class_section(report))
        body.append(_changed_section(report))
        body.append(_details(report))
    body.append("<h2>report.json</h2><details><summary>raw</summary><pre>"
                + _esc(json.dumps(reports[0] if single else reports, indent=1)[:200000]) + "</pre></details>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
