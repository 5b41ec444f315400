"""`edgeeff sweep SWEEP.toml`: a matrix of models x recipes x targets, each cell a normal compile,
run as Ray tasks, summarised in one table and page (docs/sweep.md).

How the work is shared: a model's cells all need the same loaded weights, calibration crops,
validation crops and FP32 reference logits. One compile already keeps those in its `shared` memo
(pipeline._once, as `--target onnx,intel` does). Here the first pending cell of each model (its
"leader") runs as a Ray task that returns, beside its result, that memo; Ray stores it in the
object store once and hands the same object to the model's other cells, which therefore start
only when the leader has finished and recompute none of it.

How a cell is written: by `pipeline.compile_model`, i.e. through output_folder.atomic_folder, so
the folder appears whole or not at all, exactly as `edgeeff compile --out OUT/<model>[-<recipe>]`
writes it. After it, a small record `OUT/<group>/sweep-cell-<target>.json` holds the hash of the
cell's inputs (edgeeff version, variant, weights bytes, target and recipe files, options, the
calibration and validation images' bytes) and the manifest's hash: a re-run skips a cell whose
record matches its inputs and whose folder is still the one recorded, and recompiles (replacing
the folder atomically) any other. An interrupted sweep therefore resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import sys
import time
import tomllib
from pathlib import Path

from .errors import AccuracyGateError, UserError
from .util import sha256_file, usable_cpus, write_json

# Keys of the file's top level, of a [[models]] entry, and the compile options [options] takes.
TOP_KEYS = {"out", "cpus", "cpus_per_cell", "targets", "recipes", "options", "models"}
MODEL_KEYS = {"name", "variant", "weights"}
# Every CompileOptions field but those the matrix itself decides (variant, target, out, weights,
# the recipe), those a sweep sets for every cell (force, quiet) and Ray's own (workers, address).
NOT_OPTIONS = {"variant", "target", "out", "weights", "calib_method", "force", "quiet", "workers", "ray_address"}
PATH_OPTIONS = {"calib", "val", "synsets", "train"}
DEFAULT_RECIPE = "default"  # the target's own recipe, as `compile` without --calib-method
RECORD = "sweep-cell-{target}.json"


@dataclasses.dataclass
class Cell:
    model: str           # the model's name in the file
    recipe: str          # DEFAULT_RECIPE or a calib/ recipe name
    target: str
    group: Path          # OUT/<model>[-<recipe>]: the --out of this cell's compile
    options: dict        # CompileOptions fields
    inputs_hash: str = ""
    inputs: dict = dataclasses.field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.group.name}/{self.target}"

    @property
    def record(self) -> Path:
        return self.group / RECORD.format(target=self.target)


def _compile_fields() -> dict[str, dataclasses.Field]:
    from .pipeline import CompileOptions

    return {f.name: f for f in dataclasses.fields(CompileOptions)}


def load_sweep(path: Path, out: Path | None = None) -> tuple[list[Cell], dict]:
    """The file's cells, checked: a mistake is one UserError naming the file, the key and the fix."""
    from .models.family import VARIANTS, nearest_names, resolve_variant
    from .pipeline import expand_targets
    from .profiles import get_recipe

    if not path.is_file():
        raise UserError(f"{path}: no such sweep file; see docs/sweep.md for the format")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML ({err})") from None
    base = path.resolve().parent  # relative paths in the file are relative to the file

    def where(key: str) -> str:
        return f"{path}: {key}"

    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise UserError(f"{where(unknown[0])}: unknown key{nearest_names(unknown[0], TOP_KEYS)}; "
                        f"the top level takes {', '.join(sorted(TOP_KEYS))}")
    targets_value = raw.get("targets")
    if not isinstance(targets_value, list) or not targets_value or not all(isinstance(t, str) for t in targets_value):
        raise UserError(f"{where('targets')}: give a list of target names, e.g. targets = [\"onnx\", \"intel\"]")
    try:
        targets = expand_targets(",".join(targets_value))
    except UserError as err:
        raise UserError(f"{where('targets')}: {err}") from None
    recipes = raw.get("recipes", [DEFAULT_RECIPE])
    if not isinstance(recipes, list) or not recipes or not all(isinstance(r, str) for r in recipes):
        raise UserError(f"{where('recipes')}: give a list of calibration recipes, e.g. recipes = [\"default\", "
                        f"\"percentile\"] (default: the target's own)")
    for recipe in recipes:
        if recipe != DEFAULT_RECIPE:
            try:
                get_recipe(recipe)
            except UserError as err:
                raise UserError(f"{where('recipes')}: {err}") from None
    for key in ("cpus", "cpus_per_cell"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserError(f"{where(key)}: must be a whole number of CPUs, at least 1")

    fields = _compile_fields()
    allowed = {name for name in fields if name not in NOT_OPTIONS}

    def read_options(table, key: str) -> dict:
        if not isinstance(table, dict):
            raise UserError(f"{where(key)}: must be a table of compile options")
        options = {}
        for name, value in table.items():
            field = name.replace("-", "_")  # calib-count as on the command line, or calib_count
            if field not in allowed:
                hint = (" (it is the matrix's: models' variant/weights, `targets`, `recipes`)"
                        if field in NOT_OPTIONS else nearest_names(field, allowed))
                raise UserError(f"{where(key + '.' + name)}: not a compile option a sweep takes{hint}; "
                                f"options: {', '.join(sorted(allowed))}")
            if field in PATH_OPTIONS and value is not None:
                value = (base / str(value)).resolve()
                if not value.exists():
                    raise UserError(f"{where(key + '.' + name)}: {value} does not exist")
            options[field] = value
        return options

    common = read_options(raw.get("options", {}), "options")
    models = raw.get("models")
    if not isinstance(models, list) or not models:
        raise UserError(f"{where('models')}: add at least one [[models]] table with a variant, e.g. "
                        f"[[models]] variant = \"lite0\"")
    out_root = out or (base / raw["out"] if "out" in raw else Path("out") / path.stem)
    cells, names = [], set()
    for i, model in enumerate(models):
        key = f"models[{i}]"
        if not isinstance(model, dict) or "variant" not in model:
            raise UserError(f"{where(key)}: needs a variant, e.g. variant = \"lite0\"")
        variant = resolve_variant(str(model["variant"]))
        if variant not in VARIANTS:
            raise UserError(f"{where(key + '.variant')}: {variant} is unknown{nearest_names(variant, VARIANTS)}; "
                            f"`edgeeff variants` lists the family")
        name = str(model.get("name", variant))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise UserError(f"{where(key + '.name')}: {name!r} is not a folder name; use letters, digits, . _ -")
        if name in names:
            raise UserError(f"{where(key + '.name')}: two models are named {name}; give each a distinct name")
        names.add(name)
        weights = model.get("weights")
        if weights is not None:
            weights = (base / str(weights)).resolve()
            if not weights.is_file():
                raise UserError(f"{where(key + '.weights')}: {weights} does not exist")
        own = read_options({k: v for k, v in model.items() if k not in MODEL_KEYS}, key)
        options = {**common, **own, "variant": variant, "weights": weights}
        for recipe in recipes:
            group = out_root / (name if recipe == DEFAULT_RECIPE and len(recipes) == 1 else f"{name}-{recipe}")
            for target in targets:
                cell_options = {**options, "target": target, "out": group,
                                "calib_method": None if recipe == DEFAULT_RECIPE else recipe}
                cells.append(Cell(name, recipe, target, group, cell_options))
    settings = {"file": str(path), "out": out_root, "cpus": raw.get("cpus"),
                "cpus_per_cell": raw.get("cpus_per_cell", 1), "targets": targets, "recipes": recipes,
                "models": [m.get("name", m["variant"]) for m in models]}
    return cells, settings


def _digest_images(paths_and_labels) -> str:
    digest = hashlib.sha256()
    for path, label in paths_and_labels:
        digest.update(f"{path}\0{label}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


def cell_inputs(cell: Cell, memo: dict) -> dict:
    """Everything the cell's folder depends on, by content (`memo`: digests shared by cells)."""
    from .data.images import find_images, resolve_labels, validation_entries
    from .profiles import get_recipe, get_target
    from .version import __version__

    opts = cell.options

    def once(key, compute):
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    target = get_target(cell.target)
    recipe = get_recipe(opts["calib_method"] or target.calibration)
    inputs = {
        "edgeeff": __version__, "variant": opts["variant"], "target": target.raw, "recipe": recipe,
        "weights_sha256": once(("w", opts["weights"]), lambda: sha256_file(opts["weights"])) if opts["weights"] else None,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(opts.items())
                    if k not in ("out", "target")},
    }
    if opts.get("calib"):
        calib = opts["calib"]
        inputs["calib_images"] = once(("c", calib), lambda: _digest_images(
            (p, "") for p in find_images(calib)))
    if opts.get("val"):
        labels = resolve_labels(opts.get("synsets"))
        inputs["val_images"] = once(("v", opts["val"], opts.get("synsets")), lambda: _digest_images(
            validation_entries(opts["val"], labels)))
    if opts.get("synsets"):
        inputs["synsets_sha256"] = sha256_file(opts["synsets"])
    return inputs


def complete(cell: Cell) -> Path | None:
    """The cell's folder if a finished run of these same inputs wrote it and it is untouched since."""
    try:
        record = json.loads(cell.record.read_text())
    except (OSError, ValueError):
        return None
    folder = cell.group / record.get("folder", "")
    manifest = folder / "manifest.json"
    if record.get("inputs_hash") != cell.inputs_hash or not manifest.is_file() or not (folder / "report.json").is_file():
        return None
    if sha256_file(manifest) != record.get("manifest_sha256"):
        return None  # replaced since (e.g. by a compile --force): not the folder these inputs made
    files = json.loads(manifest.read_text()).get("files", [])
    if not all((folder / f["file"]).is_file() and (folder / f["file"]).stat().st_size == f["size_bytes"] for f in files):
        return None
    return folder


def _write_record(cell: Cell, folder: Path, status: str, message: str | None) -> None:
    """Written after the folder was published, beside it, atomically (temporary file + rename)."""
    data = {"cell": cell.id, "folder": folder.name, "status": status, "message": message,
            "inputs_hash": cell.inputs_hash, "manifest_sha256": sha256_file(folder / "manifest.json"),
            "inputs": cell.inputs}
    tmp = cell.record.with_name(f".{cell.record.name}.tmp-{os.getpid()}")
    write_json(tmp, data)
    os.replace(tmp, cell.record)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, UserError) else f"{type(err).__name__}: {text}"


def _result(cell: Cell) -> dict:
    return {"cell": cell.id, "group": cell.group.name, "model": cell.model, "recipe": cell.recipe,
            "target": cell.target}


def run_cell(cell: Cell, shared: dict | None, workers: int | None) -> tuple[dict, dict]:
    """One compile (a Ray task's body). Returns its result and the `shared` memo it filled: for
    a leader the weights, images and reference logits its model's other cells reuse."""
    from .pipeline import CompileOptions, compile_model

    shared = {} if shared is None else shared
    start = time.perf_counter()
    sens = cell.options.get("sensitivity") or cell.options.get("max_drop") is not None
    # quiet: a task's output goes to Ray's log files, not the terminal; the driver prints one line per cell.
    opts = CompileOptions(**{**cell.options, "quiet": True, "workers": workers if sens else None})
    result = _result(cell)
    try:
        folder, report = compile_model(opts, shared)
        status, message = "done", None
    except AccuracyGateError as err:  # the report is written: a finished cell whose gate failed
        folder, report, status, message = err.folder, err.report, "gate", str(err)
    except Exception as err:  # noqa: BLE001 (any failure of one cell is its one line; the others go on)
        result.update(status="failed", message=_one_line(err), seconds=round(time.perf_counter() - start, 1))
        return result, shared
    _write_record(cell, folder, status, message)
    result.update(status=status, message=message, folder=str(folder), seconds=round(time.perf_counter() - start, 1),
                  int8=int8_summary(report))
    return result, shared


def _follow(cell: Cell, shared: dict, workers: int | None) -> dict:
    """A model's other cells: Ray resolves `shared` (the leader's memo) from the object store."""
    return run_cell(cell, shared, workers)[0]


def int8_summary(report: dict) -> dict:
    """The figures the matrix shows: the (first) INT8 artifact's agreement, top-1, latency, size."""
    a = next((a for a in report.get("artifacts", []) if a.get("precision") == "int8"), None)
    if a is None:
        return {}
    return {"file": a["file"], "top1": a.get("top1"), "top1_drop": a.get("top1_drop"),
            "top1_agreement": a.get("top1_agreement"), "latency_ms": (a.get("latency_ms") or {}).get("median"),
            "size_bytes": a.get("size_bytes")}


def _line(result: dict) -> str:
    status = result["status"]
    took = f" {result['seconds']:.0f} s" if result.get("seconds") is not None else ""
    if status == "failed":
        return f"{result['cell']}: FAILED{took}: {result['message']}"
    s = result.get("int8") or {}
    figures = ", ".join(part for part in (
        f"agreement {s['top1_agreement']:.2f}%" if s.get("top1_agreement") is not None else None,
        f"top-1 {s['top1']:.2f}" if s.get("top1") is not None else None,
        f"{s['latency_ms']:.2f} ms" if s.get("latency_ms") is not None else None) if part)
    word = {"done": "done", "gate": "done, over --max-drop", "skipped": "complete, skipped"}[status]
    return f"{result['cell']}: {word}{took}" + (f" (INT8 {figures})" if figures else "")


def _inputs_hash(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def run_sweep(file: Path, out: Path | None = None, address: str | None = None, cpus: int | None = None,
              quiet: bool = False) -> int:
    """`edgeeff sweep`: check the file, hash every cell's inputs, skip the complete cells, run the
    others on Ray, write the summary. The exit code: 0, 2 if a cell failed, 4 if only --max-drop
    gates failed, 130 when interrupted (the finished cells stay recorded)."""
    from . import progress
    from .distributed import cluster_address, require_ray
    from .output_folder import check_out_folder, remove_stale_partials
    from .pipeline import CompileOptions, output_name
    from .profiles import get_target

    progress.QUIET = quiet
    require_ray("edgeeff sweep")  # exit 3 with how to install it, before anything else
    started = time.perf_counter()
    cells, settings = load_sweep(file, out)
    out_root = settings["out"]
    check_out_folder(out_root)
    if cpus is not None and cpus < 1:
        raise UserError(f"--cpus {cpus}: must be at least 1")
    memo: dict = {}
    for cell in cells:
        cell.inputs = cell_inputs(cell, memo)
        cell.inputs_hash = _inputs_hash(cell.inputs)

    results: dict[str, dict] = {}
    pending: list[Cell] = []
    for cell in cells:
        folder = complete(cell)
        if folder is not None:
            report = json.loads((folder / "report.json").read_text())
            record = json.loads(cell.record.read_text())
            results[cell.id] = {**_result(cell), "status": "skipped", "recorded_status": record.get("status"),
                                "message": record.get("message"), "folder": str(folder), "int8": int8_summary(report)}
            print(_line(results[cell.id]), flush=True)
            continue
        # A folder there without a matching record was made from other inputs, or its record was
        # never written: recompiled and swapped in atomically (compile --force). Otherwise no
        # --force, so a folder that appears meanwhile is never overwritten.
        final = cell.group / output_name(CompileOptions(**cell.options), get_target(cell.target).name)
        cell.options["force"] = final.exists()
        pending.append(cell)

    local_cpus = cpus or settings["cpus"] or usable_cpus()
    joined = cluster_address(address)
    if pending:
        where = f"the Ray cluster at {joined}" if joined else f"a local Ray ({local_cpus} CPUs)"
        print(f"sweep: {len(pending)} of {len(cells)} cells to compile on {where}, "
              f"{settings['cpus_per_cell']} CPU(s) each", flush=True)
        code = _run_on_ray(pending, results, settings, local_cpus, address, quiet)
        if code is not None:
            for cell in pending:  # the cancelled cells' temporary folders (their processes are gone)
                remove_stale_partials(cell.group / output_name(CompileOptions(**cell.options),
                                                               get_target(cell.target).name))
            return code

    ordered = [results[cell.id] for cell in cells]
    wall = round(time.perf_counter() - started, 1)
    write_summary(out_root, settings, ordered, wall, joined)
    failed = [r for r in ordered if r["status"] == "failed"]
    gated = [r for r in ordered if r["status"] == "gate" or r.get("recorded_status") == "gate"]
    if failed:
        print(f"edgeeff: {len(failed)} of {len(cells)} cells failed: "
              + "; ".join(f"{r['cell']}: {r['message']}" for r in failed), file=sys.stderr)
        return UserError.exit_code
    if gated:
        print(f"edgeeff: {len(gated)} cells over --max-drop: " + ", ".join(r["cell"] for r in gated), file=sys.stderr)
        return AccuracyGateError.exit_code
    return 0


def _run_on_ray(pending: list[Cell], results: dict, settings: dict, local_cpus: int, address: str | None,
                quiet: bool) -> int | None:
    """Submit every pending cell, print each as it finishes. Returns 130 if interrupted, else None."""
    from .distributed import ray_session

    with ray_session("edgeeff sweep", local_cpus, address, quiet) as ray:
        per_cell = settings["cpus_per_cell"]
        # Sensitivity inside a cell fans its layers out too (distributed.RayLayerMap), over the
        # CPUs Ray has: a cell waiting on its layer tasks gives its own CPU back meanwhile.
        workers = int(ray.cluster_resources().get("CPU", local_cpus))
        leader_task = ray.remote(num_cpus=per_cell, max_retries=0, num_returns=2)(run_cell)
        follow_task = ray.remote(num_cpus=per_cell, max_retries=0)(_follow)
        by_model: dict[str, list[Cell]] = {}
        for cell in pending:
            by_model.setdefault(cell.model, []).append(cell)
        refs = {}
        for model_cells in by_model.values():
            leader, *others = model_cells
            result_ref, shared_ref = leader_task.remote(leader, None, workers)
            refs[result_ref] = leader
            for cell in others:
                refs[follow_task.remote(cell, shared_ref, workers)] = cell
        remaining = list(refs)
        # Ctrl-C sets a flag that the loop reads between short waits: a KeyboardInterrupt raised
        # while ray.wait blocks can be swallowed inside Ray (a sweep once ran on to exit 0).
        interrupted = []
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        try:
            while remaining:
                done, remaining = ray.wait(remaining, num_returns=1, timeout=0.2)
                for ref in done:
                    cell = refs[ref]
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as err:  # the worker died (killed, out of memory)
                        cause = getattr(err, "cause", None) or err
                        result = {**_result(cell), "status": "failed", "message": _one_line(cause)}
                    results[cell.id] = result
                    print(f"[{len(refs) - len(remaining)}/{len(refs)}] " + _line(result), flush=True)
                if interrupted and remaining:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            # ray.cancel raises KeyboardInterrupt inside each running cell, whose atomic_folder
            # then removes its temporary folder; wait a little for that before Ray is shut down.
            for ref in remaining:
                ray.cancel(ref)
            ray.wait(remaining, num_returns=len(remaining), timeout=15)
            finished = sum(1 for r in results.values() if r["status"] != "skipped")
            print(f"edgeeff: sweep interrupted: {finished} cells finished and recorded, {len(remaining)} "
                  f"cancelled (no folder half-written); run the same command again to compile the rest",
                  file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGINT, previous)
    return None


def matrix_rows(settings: dict, results: list[dict]) -> list[list[str]]:
    """Header + one row per model (and recipe), one column per target: INT8 agreement / latency."""
    groups = list(dict.fromkeys(r["group"] for r in results))
    targets = settings["targets"]
    table = {(r["group"], r["target"]): r for r in results}
    rows = [["model"] + [f"{t}: INT8 agreement % / ms" for t in targets]]
    for group in groups:
        row = [group]
        for target in targets:
            r = table.get((group, target))
            if r is None:
                row.append("-")
            elif r["status"] == "failed":
                row.append("failed")
            else:
                s = r.get("int8") or {}
                agreement = f"{s['top1_agreement']:.2f}" if s.get("top1_agreement") is not None else "n/m"
                latency = f"{s['latency_ms']:.2f}" if s.get("latency_ms") is not None else "n/m"
                row.append(f"{agreement} / {latency}")
        rows.append(row)
    return rows


def chart_points(results: list[dict]) -> dict[str, list[tuple[str, float, float]]]:
    """target -> (model group, INT8 latency ms, INT8 agreement %) for each cell that measured both."""
    points: dict[str, list] = {}
    for r in results:
        s = r.get("int8") or {}
        if s.get("latency_ms") is not None and s.get("top1_agreement") is not None:
            points.setdefault(r["target"], []).append((r["group"], s["latency_ms"], s["top1_agreement"]))
    return points


def write_summary(out_root: Path, settings: dict, results: list[dict], wall_s: float, address: str | None) -> None:
    """sweep.json, sweep.md and sweep.html in OUT, by the code `edgeeff report` uses."""
    from .report.contract import markdown_table, read_reports
    from .report.html_page import render, sweep_section

    folders = [Path(r["folder"]) for r in results if r.get("folder")]
    reports = read_reports(folders) if folders else []
    matrix = matrix_rows(settings, results)
    data = {"sweep": settings["file"], "out": str(out_root), "targets": settings["targets"],
            "recipes": settings["recipes"], "models": settings["models"],
            "ray": {"address": address or "local", "cpus_per_cell": settings["cpus_per_cell"]},
            "wall_s": wall_s, "cells": results}
    write_json(out_root / "sweep.json", data)
    failed = [r for r in results if r["status"] == "failed"]
    lines = [f"# Sweep: {settings['file']}", "",
             "INT8 top-1 agreement with the FP32 reference (%) / median latency at batch 1 (ms), per model and "
             "target. Latency was timed while other cells ran: compare it within a row with care, and "
             "time on a quiet machine for figures to quote.", "", *markdown_table(matrix), ""]
    if failed:
        lines += ["## Failed cells", ""] + [f"- {r['cell']}: {r['message']}" for r in failed] + [""]
    lines += [f"{len(results)} cells, {len(failed)} failed, "
              f"{sum(r['status'] == 'skipped' for r in results)} skipped as complete; {wall_s:.0f} s.", ""]
    (out_root / "sweep.md").write_text("\n".join(lines))
    (out_root / "sweep.html").write_text(render(reports, title=f"edgeeff sweep: {Path(settings['file']).name}",
                                                extra=sweep_section(matrix, chart_points(results), failed))
                                         if reports else
                                         render_failures_only(settings, failed))
    print("\n".join(lines[4:4 + len(matrix) + 1]))
    print(f"wrote {out_root}/sweep.json, sweep.md, sweep.html")


def render_failures_only(settings: dict, failed: list[dict]) -> str:
    import html

    items = "".join(f"<li>{html.escape(r['cell'])}: {html.escape(r['message'] or '')}</li>" for r in failed)
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>edgeeff sweep</title></head>"
            f"<body><h1>edgeeff sweep: {html.escape(settings['file'])}</h1><p>No cell finished.</p><ul>{items}</ul>"
            f"</body></html>\n")
