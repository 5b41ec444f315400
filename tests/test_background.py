"""Work begun in a background process for a later target of the same command (edgeeff/background.py):
it must hand back exactly the bytes the work gives in-process, fail over to doing the work here, and
be started only for later targets whose backend has such work."""

import dataclasses
from pathlib import Path

import pytest

from edgeeff import background
from edgeeff.data.images import ImageSet

from .test_variants import RES, _crops, _model, _spec


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    background.stop_all()


def test_a_failed_or_unknown_job_gives_no_result_and_stop_all_cleans_up(tmp_path):
    folder = background.workspace()
    assert background.result("never started") is None
    background.start("fails", "edgeeff.background:no_such_function", [], tmp_path / "out.bin")
    assert background.started("fails")
    assert background.result("fails") is None  # the caller then does the work itself
    background.settle()
    background.stop_all()
    assert not folder.exists() and not background.started("fails")


def test_background_float_conversion_is_byte_identical_to_converting_here(tmp_path):
    """The phone targets' case (normalisation inside the graph: its mean and std travel as text)."""
    pytest.importorskip("litert_torch", reason="the tflite extra is not installed")
    from edgeeff.backends import litert

    normalise = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    model = _model("b0", se=True, seed=4)
    here = litert.convert_float(model, RES, tmp_path / "here.tflite", normalise)  # nothing started: in-process
    litert.start_float_conversion(model, RES, normalise)
    key = litert.float_conversion_key(model, RES, normalise)
    assert background.started(key)
    done = background.result(key)
    assert done is not None, (background.workspace() / f"{key}.log").read_text()[-2000:]
    copied = litert.convert_float(model, RES, tmp_path / "copied.tflite", normalise)
    assert copied.read_bytes() == here.read_bytes()
    # another model (other weights) is not served the finished file
    other = _model("b0", se=True, seed=5)
    assert litert.float_conversion_key(other, RES, normalise) != key


@dataclasses.dataclass
class _Options:
    target: str
    scale_groups: str | None = None


def test_only_later_targets_with_background_work_are_started(monkeypatch):
    from edgeeff import pipeline
    from edgeeff.backends import litert

    started = []
    monkeypatch.setattr(litert, "available", lambda: None)
    monkeypatch.setattr(litert, "start_float_conversion", lambda model, res, normalise: started.append(normalise))
    shared = {"targets": ["onnx", "rpi", "intel", "android"]}
    spec = _spec()
    calibration = ImageSet(crops=_crops(4), labels=None, paths=[Path(f"{i}.jpg") for i in range(4)], skipped=[],
                           source="test")
    pipeline.start_background_work(_Options(target="rpi"), shared, _model(), spec, calibration)
    # rpi is this target (converted here), onnx came before, intel has no such work: android only,
    # which takes pixels and normalises inside its graph
    assert started == [(tuple(spec.mean), tuple(spec.std))]
