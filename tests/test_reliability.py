"""Fault injection: nothing lost or half-written under SIGKILL, concurrent runs, full disks and
damaged caches (edgeeff/output_folder.py, edgeeff/cache.py; docs/reliability.md counts the cases).

Each compile runs as a separate process, as a user runs it. A kill lands at a chosen point through
EDGEEFF_FAULT_KILL_AT (a stage name, or `publish` just before the final rename), not by a timer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeeff.output_folder import _exchange

from .photos import synthetic_photo_folders

pytestmark = pytest.mark.slow

# Lite0 with its packaged weights on ONNX Runtime: the quickest real compile.
BASE = ["--variant", "lite0", "--target", "onnx", "--calib-count", "4", "--latency-runs", "1", "--quiet"]
KILL_POINTS = ["export_onnx", "quantize", "evaluate_model_fp32.onnx", "publish"]
ARTIFACTS = ("model_fp32.onnx", "model_int8.onnx")


def run(args: list[str], env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "edgeeff", "compile", *args]
    full_env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path]:
    """A calibration folder and a two-class validation tree of synthetic photos (real synsets)."""
    return synthetic_photo_folders(tmp_path_factory.mktemp("images"), val_per_class=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images) -> Path:
    """The artifacts of an undisturbed run, to compare every recovered run with."""
    calib, val = images
    out = tmp_path_factory.mktemp("reference")
    result = run(BASE + ["--calib", str(calib), "--val", str(val), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    return out / "lite0-onnx"


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_a_normal_run_gives_the_same_bytes_and_no_stray_folder(point, images, reference, tmp_path):
    calib, val = images
    args = BASE + ["--calib", str(calib), "--val", str(val), "--out", str(tmp_path)]
    killed = run(args, env={"EDGEEFF_FAULT_KILL_AT": point})
    assert killed.returncode == -9, (point, killed.returncode, killed.stderr)
    assert not (tmp_path / "lite0-onnx").exists()  # never a half-written folder under the real name
    assert any(name.startswith(".lite0-onnx.partial-") for name in leftovers(tmp_path)), leftovers(tmp_path)
    again = run(args)
    assert again.returncode == 0, again.stderr
    assert leftovers(tmp_path) == []  # the killed run's partial and lock are gone
    for name in ARTIFACTS:
        assert (tmp_path / "lite0-onnx" / name).read_bytes() == (reference / name).read_bytes(), name


def test_two_concurrent_compiles_into_one_folder_one_wins_the_other_says_so(images, tmp_path):
    calib, _ = images
    args = BASE + ["--calib", str(calib), "--out", str(tmp_path)]
    first, second = run(args, wait=False), run(args + ["--calib-count", "3"], wait=False)
    results = [(p.wait(timeout=900), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    code, _, err = next(r for r in results if r[0] == 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "lite0-onnx" in lines[0], err
    assert "another edgeeff run (process" in lines[0] or "already exists" in lines[0], err
    winner = 4 if results[0][0] == 0 else 3  # the folder holds the winner's files
    report = json.loads((tmp_path / "lite0-onnx" / "report.json").read_text())
    assert report["calibration"]["requested"] == winner
    assert leftovers(tmp_path) == []


def test_a_folder_that_appears_meanwhile_is_not_replaced_without_force(images, tmp_path):
    """Another process (not edgeeff) creates the folder while the compile works: the rename
    refuses, the stranger's folder stays as it was."""
    calib, _ = images
    args = BASE + ["--calib", str(calib), "--out", str(tmp_path)]
    proc = run(args, wait=False)
    folder = tmp_path / "lite0-onnx"
    # Created right after the run's start-up checks passed (before its heavy work ends).
    import time

    deadline = time.time() + 300
    while not any(n.startswith(".lite0-onnx.partial-") for n in leftovers(tmp_path)) and time.time() < deadline:
        time.sleep(0.05)
    folder.mkdir()
    (folder / "theirs.txt").write_text("not edgeeff's")
    code = proc.wait(timeout=900)
    err = proc.stderr.read()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "appeared" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["theirs.txt"]
    assert leftovers(tmp_path) == []


def test_force_swaps_the_folders_in_one_step(tmp_path):
    """--force exchanges new and old atomically (renameat2), so the name never points nowhere."""
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    old.mkdir()
    (new / "a").write_text("new")
    (old / "a").write_text("old")
    if not _exchange(new, old):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported on this file system")
    assert (old / "a").read_text() == "new" and (new / "a").read_text() == "old"


def test_force_replaces_an_existing_folder_and_leaves_nothing_else(images, tmp_path):
    calib, _ = images
    args = BASE + ["--calib", str(calib), "--out", str(tmp_path)]
    assert run(args).returncode == 0
    (tmp_path / "lite0-onnx" / "old-marker").write_text("x")
    again = run(args + ["--force"])
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "lite0-onnx" / "old-marker").exists()
    assert (tmp_path / "lite0-onnx" / "model_int8.onnx").is_file() and leftovers(tmp_path) == []


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_out_on_a_full_disk_is_one_line_and_leaves_nothing(images, tmp_path):
    disk = tmp_path / "tiny"
    if not _mount_tmpfs(disk, "20m"):
        pytest.skip("needs root and a mountable tmpfs for a 20 MB --out (the tests run as root in CI)")
    try:
        calib, _ = images
        result = run(BASE + ["--calib", str(calib), "--out", str(disk)])
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "no space left" in lines[0] and str(disk) in lines[0] and "MB" in lines[0], lines
        assert os.listdir(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_damaged_cache_entries_are_recomputed_never_read(images, tmp_path):
    calib, val = images
    cache = tmp_path / "cache"
    args = BASE + ["--calib", str(calib), "--val", str(val), "--force"]
    env = {"EDGEEFF_CACHE": str(cache)}
    first = run(args + ["--out", str(tmp_path / "a")], env=env)
    assert first.returncode == 0, first.stderr
    entries = sorted(p for p in cache.rglob("*") if p.is_file())
    kinds = {p.parent.name for p in entries}
    assert {"reference_logits", "calibration_stats"} <= kinds, entries
    for entry in entries:  # cut every entry in half
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    second = run(args + ["--out", str(tmp_path / "b")], env=env)
    assert second.returncode == 0, second.stderr
    report = json.loads((tmp_path / "b" / "lite0-onnx" / "report.json").read_text())
    assert report["reference"]["cached"] is False  # recomputed, not read
    reference = json.loads((tmp_path / "a" / "lite0-onnx" / "report.json").read_text())
    for a, b in zip(reference["artifacts"], report["artifacts"]):
        assert a["top1"] == b["top1"] and a["top1_agreement"] == b["top1_agreement"]
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8")
    changed, images = int8["top1_changed"], report["dataset"]["images"]  # the images behind the agreement
    assert round(100 * (1 - changed["count"] / images), 2) == int8["top1_agreement"]
    assert len(changed["indices"]) == changed["count"] and all(0 <= i < images for i in changed["indices"])
    for name in ARTIFACTS:
        assert (tmp_path / "a" / "lite0-onnx" / name).read_bytes() == (tmp_path / "b" / "lite0-onnx" / name).read_bytes()
    for entry in entries:  # whole again
        np.load(entry).close() if entry.suffix == ".npz" else np.load(entry)


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_failure(images, tmp_path):
    calib, _ = images
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    result = run(BASE + ["--calib", str(calib), "--out", str(tmp_path)], env={"EDGEEFF_CACHE": str(blocker / "cache")})
    assert result.returncode == 0, result.stderr
    assert "edgeeff: warning: cache" in result.stderr and "continuing without it" in result.stderr
    assert (tmp_path / "lite0-onnx" / "model_int8.onnx").is_file()
