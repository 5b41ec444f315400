"""Shared fixtures. Real ImageNet images and the B0 test weights come from ../shared when it is
there; tests that need them skip with the reason otherwise (the images may not be shipped)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEEFF_SHARED", REPO.parent / "shared"))
SAMPLE = SHARED / "data" / "imagenet-sample"
B0_TEST_WEIGHTS = SHARED / "data" / "weights" / "efficientnet-b0-swish-se-test.pth"

needs_shared = pytest.mark.skipif(
    not (SAMPLE / "val").is_dir(),
    reason=f"needs the ImageNet sample at {SAMPLE} (not shippable; present beside the checkout in CI)")
needs_b0_weights = pytest.mark.skipif(
    not B0_TEST_WEIGHTS.is_file(), reason=f"needs the B0 swish+SE test weights at {B0_TEST_WEIGHTS}")


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
