"""Shared fixtures. Real ImageNet images and the B0 test weights come from ../shared when it is
there; tests that need them skip with the reason otherwise (the images may not be shipped)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEEFF_SHARED", REPO.parent / "shared"))
SAMPLE = SHARED / "data" / "imagenet-sample"
B0_TEST_WEIGHTS = SHARED / "data" / "weights" / "efficientnet-b0-swish-se-test.pth"
# A quick compile: few calibration images (the packaged photos without --calib), short timing.
QUICK = ["--calib-count", "9", "--latency-runs", "3", "--quiet"]

needs_shared = pytest.mark.skipif(
    not (SAMPLE / "val").is_dir(),
    reason=f"needs the ImageNet sample at {SAMPLE} (not shippable; present beside the checkout in CI)")
needs_b0_weights = pytest.mark.skipif(
    not B0_TEST_WEIGHTS.is_file(), reason=f"needs the B0 swish+SE test weights at {B0_TEST_WEIGHTS}")


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers), each worker gets cores of its own (one each on
    two cores): edgeeff then sizes its runtimes to them (util.usable_cpus), and two workers' ONNX Runtime pools
    never spin against each other. Subprocesses (the device scripts, Ray) inherit the pinning."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if len(cpus) >= workers > 1:
        mine = cpus[int(worker[2:]) % workers::workers]  # worker i: every workers-th core from i
        os.sched_setaffinity(0, mine)
        os.environ["OMP_NUM_THREADS"] = str(len(mine))  # before torch is first imported by a test module


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never read a developer's cache: a stale hit must not make a test pass."""
    os.environ["EDGEEFF_CACHE"] = str(tmp_path_factory.mktemp("edgeeff-cache"))
    yield


@pytest.fixture(scope="session")
def sample():
    return SAMPLE


# A device script run as on the device: `python -I` (no PYTHONPATH, user site or script folder on
# sys.path) with edgeeff unimportable (it is installed in this venv), from a cwd of its own.
ON_DEVICE = ("import runpy, sys; sys.modules['edgeeff'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def copy_to_device(folder: Path, device: Path, *names: str) -> Path:
    """What a user copies from edgeeff's output folder to the Pi/Jetson/PC: the named files."""
    device.mkdir(parents=True, exist_ok=True)
    for name in names:
        (device / name).write_bytes((folder / name).read_bytes())
    return device


def run_on_device(script: Path, *args, cwd: Path, timeout: int = 600):
    import subprocess
    import sys

    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-I", "-c", ON_DEVICE, str(script), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


# Helpers for the modules that compile once (module-scoped fixtures) and check the report.

def compile_model(out: Path, variant: str, target: str, *options: str) -> tuple[Path, dict]:
    """`edgeeff compile` into `out`, which must succeed: its output folder and report.json."""
    from edgeeff.cli import main
    from edgeeff.profiles import get_target

    assert main(["compile", "--variant", variant, "--target", target, "--out", str(out), *options]) == 0
    folder = out / f"{variant}-{get_target(target).name}"  # an alias compiles under the target's name
    return folder, json.loads((folder / "report.json").read_text())


def on_sample(sample: Path) -> list[str]:
    """The compile options that calibrate and validate on the ImageNet sample."""
    return ["--calib", str(sample / "calib"), "--val", str(sample / "val")]


def artifact(report: dict, precision: str) -> dict:
    """The report's (first) artifact of that precision."""
    return next(a for a in report["artifacts"] if a["precision"] == precision)


def check_fp32_matches_reference(report: dict) -> dict:
    """The bar for Lite0's FP32 artifact on the sample; returns that artifact."""
    # ~84% with bicubic 256 -> 224: a point lower means weights, padding or preprocessing are wrong.
    assert report["reference"]["top1"] >= 83.0
    fp32 = artifact(report, "fp32")
    assert fp32["top1_agreement"] >= 99.5 and fp32["max_abs_diff_vs_reference"] < 1e-2, fp32
    return fp32


def check_int8_meets_the_bar(a: dict) -> None:
    """The INT8 bar on the sample: at most 0.5 points of top-1 lost, at least 98% top-1 agreement."""
    assert a["top1_drop"] <= 0.5, a
    assert a["top1_agreement"] >= 98.0, a


def eval_artifact(folder: Path, model_file: str, sample: Path, out_json: Path) -> dict:
    """`edgeeff eval` of `folder/model_file` on the sample's validation set: its JSON result."""
    from edgeeff.cli import main

    assert main(["eval", str(folder / model_file), "--val", str(sample / "val"), "--json", str(out_json),
                 "--quiet"]) == 0
    return json.loads(out_json.read_text())
