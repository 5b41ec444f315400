"""`edgeeff sweep` and `--workers` on Ray (edgeeff/sweep.py, edgeeff/distributed.py, docs/sweep.md).

Ray runs locally with at most 2 CPUs. The slow tests compile Lite0 for ONNX Runtime on synthetic
photos with 4 calibration images: a sweep of two cells (one model, two recipes) is interrupted
with SIGINT after its first cell, then run again with a third cell that fails; the finished cell is
skipped, the other compiled, the failing one reported in one line, and the first cell's report
matches a separate `edgeeff compile` (timings aside).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeeff.cli import main
from edgeeff.report.contract import comparable

from .photos import synthetic_photo_folders

pytest.importorskip("ray", reason="edgeeff[sweep] (ray) is not installed")

QUICK = {"calib_count": 4, "latency_runs": 1}
# What differs between two runs of the same compile: wall times, memory, latency and whether
# the FP32 reference's logits and the calibration statistics came from the cache (edgeeff/cache.py).


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- one-line errors, no Ray started ----------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("targets = [\"onnx\"\n", "not valid TOML"),
    ("targets = [\"onnx\"]\ncolour = 1\n[[models]]\nvariant = \"lite0\"\n", "colour: unknown key"),
    ("targets = [\"onnx\"]\n[[models]]\nvariant = \"lite0\"\n[options]\ncalib_cont = 8\n",
     "options.calib_cont: not a compile option a sweep takes (did you mean calib_count"),
    ("targets = [\"onnx\"]\n[[models]]\nvariant = \"lite0\"\n[options]\nvariant = \"b0\"\n",
     "options.variant: not a compile option a sweep takes (it is the matrix's"),
    ("targets = [\"onxx\"]\n[[models]]\nvariant = \"lite0\"\n", "targets: --target onxx: unknown"),
    ("targets = [\"onnx\"]\n[[models]]\nvariant = \"lite9\"\n", "models[0].variant: lite9 is unknown"),
    ("targets = [\"onnx\"]\n[[models]]\nvariant = \"b0\"\nweights = \"nowhere.pth\"\n",
     "models[0].weights: "),
    ("targets = [\"onnx\"]\n[[models]]\nvariant = \"lite0\"\n[options]\ncalib = \"no-such-folder\"\n",
     "options.calib: "),
    ("targets = [\"onnx\"]\nrecipes = [\"percentil\"]\n[[models]]\nvariant = \"lite0\"\n", "recipes: --calib-method"),
    ("targets = [\"onnx\"]\n", "models: add at least one [[models]]"),
    ("targets = [\"onnx\"]\n[[models]]\nvariant = \"lite0\"\n[[models]]\nvariant = \"lite0\"\n",
     "two models are named lite0"),
])
def test_a_mistake_in_the_file_is_one_line_naming_the_key(tmp_path, capsys, text, expected):
    sweep = write_toml(tmp_path / "s.toml", text)
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(sweep) in err and expected in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_missing_sweep_file_is_one_line(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.toml")]) == 2
    assert "no such sweep file" in capsys.readouterr().err


def test_without_ray_sweep_says_how_to_install_it_and_exits_3(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    sweep = write_toml(tmp_path / "s.toml", "targets = [\"onnx\"]\n[[models]]\nvariant = \"lite0\"\n")
    assert main(["sweep", str(sweep)]) == 3
    assert "pip install 'edgeeff[sweep]'" in capsys.readouterr().err
    assert main(["compile", "--variant", "lite0", "--target", "onnx", "--sensitivity", "--workers", "2",
                 "--out", str(tmp_path / "o")]) == 3


# ---- real runs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path]:
    """A calibration folder and a two-class validation tree of synthetic photos (real synsets)."""
    return synthetic_photo_folders(tmp_path_factory.mktemp("images"), val_per_class=3)


@pytest.fixture(scope="module")
def separate(images, tmp_path_factory) -> Path:
    """A separate `edgeeff compile` of the sweep's first cell (Lite0, ONNX, the target's recipe)."""
    calib, val = images
    out = tmp_path_factory.mktemp("separate")
    assert main(["compile", "--variant", "lite0", "--target", "onnx", "--calib", str(calib), "--val", str(val),
                 "--calib-count", str(QUICK["calib_count"]), "--latency-runs", str(QUICK["latency_runs"]),
                 "--out", str(out), "--quiet"]) == 0
    return out / "lite0-onnx"


def sweep_command(toml: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "edgeeff", "sweep", str(toml), "--out", str(out), "--cpus", "2"]


@pytest.mark.slow
def test_sigint_then_rerun_skips_the_finished_cell_and_matches_separate_compiles(images, separate, tmp_path):
    calib, val = images
    toml = write_toml(tmp_path / "two.toml", f"""
targets = ["onnx"]
recipes = ["default", "percentile"]
[options]
calib = "{calib}"
val = "{val}"
calib_count = {QUICK['calib_count']}
latency_runs = {QUICK['latency_runs']}
[[models]]
variant = "lite0"
""")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The second cell starts only when the first has finished (it reuses the first's model and
    # images): SIGINT right after the first cell's line usually lands while the second is
    # compiling. With every input cached that cell takes only seconds and can still finish before
    # the cancel reaches it (seen once in CI), so the checks hold either way: each cell is either
    # complete and recorded or absent, never half-written, and the re-run redoes none that finished.
    run = subprocess.Popen(sweep_command(toml, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env)
    lines = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = run.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("[1/2]"):
            run.send_signal(signal.SIGINT)
            break
    rest, err = run.communicate(timeout=300)
    lines += rest.splitlines()
    if not any(line.startswith("[2/2]") for line in lines):  # else the sweep ended before the flag was read
        assert run.returncode == 130, (lines, err)
        assert "sweep interrupted" in err and "run the same command again" in err
    first = next(line for line in lines if line.startswith("[1/2]")).split("] ", 1)[1].split(":", 1)[0]
    group = first.split("/")[0]
    other = "lite0-percentile" if group == "lite0-default" else "lite0-default"
    assert (out / group / "lite0-onnx" / "manifest.json").is_file()
    assert (out / group / "sweep-cell-onnx.json").is_file()
    # The second cell: recorded (it finished before the cancel reached it), or absent with no
    # temporary folder or lock left; a published folder whose record the cancel cut off is
    # complete too (the re-run recompiles it).
    second_recorded = (out / other / "sweep-cell-onnx.json").is_file()
    if (out / other / "lite0-onnx").exists():
        assert (out / other / "lite0-onnx" / "manifest.json").is_file()
    if (out / other).exists():
        assert not [p.name for p in (out / other).iterdir() if p.name.startswith(".")], list((out / other).iterdir())

    # Again, with a third recipe ONNX Runtime does not implement: that cell fails in one line,
    # the others finish; the finished cells are skipped (the recipes list does not change their inputs).
    toml.write_text(toml.read_text().replace('"percentile"]', '"percentile", "mean_minmax"]'))
    again = subprocess.run(sweep_command(toml, out), capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 2, again.stderr
    assert f"{group}/onnx: complete, skipped" in again.stdout
    if second_recorded:
        assert f"{other}/onnx: complete, skipped" in again.stdout and "[1/1]" in again.stdout
    else:
        assert "[2/2]" in again.stdout and f"{other}/onnx: done" in again.stdout
    assert "lite0-mean_minmax/onnx: FAILED" in again.stdout and "--calib-method mean_minmax" in again.stdout
    assert "1 of 3 cells failed" in again.stderr
    summary = json.loads((out / "sweep.json").read_text())
    statuses = {c["cell"]: c["status"] for c in summary["cells"]}
    assert statuses == {f"{group}/onnx": "skipped", f"{other}/onnx": "skipped" if second_recorded else "done",
                        "lite0-mean_minmax/onnx": "failed"}
    assert (out / "sweep.md").read_text().count("lite0-") >= 2 and "<svg" in (out / "sweep.html").read_text()
    assert not [p.name for p in (out / other).iterdir() if p.name.startswith(".")]

    # The same cell as a separate compile: the same report, timings aside.
    mine = json.loads((out / "lite0-default" / "lite0-onnx" / "report.json").read_text())
    assert comparable(mine) == comparable(json.loads((separate / "report.json").read_text()))
    manifest = json.loads((out / "lite0-default" / "lite0-onnx" / "manifest.json").read_text())
    assert {f["file"] for f in manifest["files"]} == {p.name for p in separate.iterdir()} - {"manifest.json"}

    # Other inputs (another calibration count): no cell counts as complete any more.
    from edgeeff.sweep import _inputs_hash, cell_inputs, complete, load_sweep

    def finished() -> list:
        cells, _ = load_sweep(toml, out)
        memo: dict = {}
        for cell in cells:
            cell.inputs = cell_inputs(cell, memo)
            cell.inputs_hash = _inputs_hash(cell.inputs)
        return [complete(cell) is not None for cell in cells]

    assert finished() == [True, True, False]
    toml.write_text(toml.read_text().replace(f"calib_count = {QUICK['calib_count']}", "calib_count = 3"))
    assert finished() == [False, False, False]


@pytest.mark.slow
def test_sensitivity_on_two_ray_workers_ranks_exactly_as_serial(images, separate):
    """The per-layer evaluations as Ray tasks give the serial SQNRs and ranking (10 layers of Lite0)."""
    from edgeeff.backends.onnxruntime import QdqFloatVariants, prepared_fp32
    from edgeeff.data.images import load_calibration
    from edgeeff.distributed import RayLayerMap
    from edgeeff.models.family import spec_for_variant
    from edgeeff.quant.sensitivity import rank_layers

    calib, _ = images
    folder = separate
    spec = spec_for_variant("lite0")
    variants = QdqFloatVariants(folder / "model_int8.onnx", prepared_fp32(folder / "model_fp32.onnx"), spec, 2,
                                "onnxruntime")
    crops = load_calibration(calib, 4, spec, quiet=True).crops
    layers = variants.layers[::6][:10]
    serial = rank_layers(variants, layers, crops, quiet=True)
    fanned = rank_layers(variants, layers, crops, quiet=True, evaluate=RayLayerMap(2))
    assert serial.order() == fanned.order()
    assert [s.sqnr_db for s in serial.layers] == [s.sqnr_db for s in fanned.layers]
