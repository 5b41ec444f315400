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


def test_background_reference_logits_equal_the_in_process_ones():
    """The FP32 reference computed beside the export (another process) is what the compile would
    have computed itself (40 crops: a full call and a partial one); logits that differ in the
    last call are refused."""
    import numpy as np

    from edgeeff.scoring import TorchRunner, predict_all, reference_from_background, start_reference_in_background

    model, spec, crops = _model("b0", se=True, seed=6), _spec(), _crops(40)
    runner = TorchRunner(model, spec, threads=2)
    here = predict_all(runner, crops, quiet=True)
    start_reference_in_background("reference", model, spec, crops, threads=2)
    done = reference_from_background("reference", runner, crops)
    assert done is not None, (background.workspace() / "reference.log").read_text()[-2000:]
    assert np.array_equal(done, here)
    # a job whose first logits are not this runner's is not used: the caller computes them
    other = TorchRunner(_model("b0", se=True, seed=7), spec, threads=2)
    assert reference_from_background("reference", other, crops) is None
    assert reference_from_background("never started", runner, crops) is None


@pytest.mark.slow
def test_a_compile_with_the_reference_in_the_background_reports_the_same(tmp_path, monkeypatch):
    """The same compile with its FP32 reference computed in a background process (the threshold
    lowered so that 40 small images qualify) and in its turn: the same report, bar the timings."""
    import json

    import numpy as np
    from PIL import Image

    from edgeeff import pipeline
    from edgeeff.cli import main

    rng = np.random.default_rng(0)
    for folder, count in (("calib/a", 3), ("val/n01443537", 20), ("val/n01440764", 20)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    started = []
    real_start = pipeline.start_reference_in_background
    monkeypatch.setattr(pipeline, "start_reference_in_background", lambda *a: started.append(a[0]) or real_start(*a))
    taken = []
    real_take = pipeline.reference_from_background
    monkeypatch.setattr(pipeline, "reference_from_background", lambda *a: taken.append(real_take(*a)) or taken[-1])
    reports = []
    for minimum in (0, float("inf")):
        monkeypatch.setattr(pipeline, "BACKGROUND_REFERENCE_MIN_MACS", minimum)
        monkeypatch.setenv("EDGEEFF_CACHE", str(tmp_path / f"cache-{minimum}"))  # both compute it
        out = tmp_path / f"out-{minimum}"
        assert main(["compile", "--variant", "lite0", "--target", "onnx", "--calib", str(tmp_path / "calib"),
                     "--val", str(tmp_path / "val"), "--calib-count", "3", "--latency-runs", "2", "--quiet",
                     "--out", str(out)]) == 0
        report = json.loads((out / "lite0-onnx" / "report.json").read_text())
        reports.append({"reference": report["reference"],
                        "scores": [{k: a.get(k) for k in ("file", "top1", "top1_agreement", "max_abs_diff_vs_reference")}
                                   for a in report["artifacts"]]})
    assert len(started) == 1  # the first compile only
    assert taken[0] is not None and taken[1:] == [None]  # its logits were used; the second had no job
    assert reports[0] == reports[1]
    assert not background.any_started()  # the command ended its background work
