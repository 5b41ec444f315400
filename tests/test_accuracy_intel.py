"""The intel target's bars on real ImageNet photos (../shared): Lite0 INT8 IR in OpenVINO."""

import json

import pytest

from edgeeff.cli import main

from .conftest import needs_shared

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytestmark = [needs_shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def lite0_intel(tmp_path_factory, sample):
    out = tmp_path_factory.mktemp("out")
    assert main(["compile", "--variant", "lite0", "--target", "intel", "--calib", str(sample / "calib"),
                 "--val", str(sample / "val"), "--out", str(out), "--latency-runs", "5", "--quiet"]) == 0
    folder = out / "lite0-intel"
    return folder, json.loads((folder / "report.json").read_text())


def _artifact(report, precision):
    return next(a for a in report["artifacts"] if a["precision"] == precision)


def test_fp32_ir_matches_the_pytorch_reference(lite0_intel):
    _, report = lite0_intel
    assert report["reference"]["top1"] >= 83.0
    fp32 = _artifact(report, "fp32")
    assert fp32["top1_agreement"] >= 99.5 and fp32["max_abs_diff_vs_reference"] < 1e-2, fp32


def test_int8_ir_meets_the_bar(lite0_intel):
    _, report = lite0_intel
    int8 = _artifact(report, "int8")
    assert int8["top1_drop"] <= 0.5, int8
    assert int8["top1_agreement"] >= 98.0, int8
    assert int8["quantization"]["subset_size"] == 300


def test_eval_command_reproduces_the_report(lite0_intel, sample, tmp_path):
    folder, report = lite0_intel
    out = tmp_path / "eval.json"
    assert main(["eval", str(folder / "model_int8.xml"), "--val", str(sample / "val"), "--json", str(out),
                 "--quiet"]) == 0
    int8 = _artifact(report, "int8")
    result = json.loads(out.read_text())
    assert (result["top1"], result["top5"]) == (int8["top1"], int8["top5"])
    assert result["runtime"] == int8["runtime"]
