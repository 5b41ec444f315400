"""The accuracy bars on real ImageNet photos (../shared): Lite0 with its packaged weights."""

import pytest

from .conftest import (
    artifact,
    check_fp32_matches_reference,
    check_int8_meets_the_bar,
    compile_model,
    eval_artifact,
    needs_shared,
    on_sample,
)

pytestmark = [needs_shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def lite0_onnx(tmp_path_factory, sample):
    return compile_model(tmp_path_factory.mktemp("out"), "lite0", "onnx", *on_sample(sample),
                         "--latency-runs", "5", "--quiet", "--sensitivity")


def test_fp32_reference_is_right(lite0_onnx):
    _, report = lite0_onnx
    check_fp32_matches_reference(report)


def test_int8_onnx_meets_the_bar(lite0_onnx):
    _, report = lite0_onnx
    int8 = artifact(report, "int8")
    check_int8_meets_the_bar(int8)


def test_report_follows_the_contract(lite0_onnx):
    _, report = lite0_onnx
    for key in ("variant", "target", "backend", "preprocess", "calibration", "dataset", "reference", "artifacts"):
        assert key in report
    assert report["dataset"] == {**report["dataset"], "images": 650, "classes": 456}
    assert report["calibration"]["images"] == 300 and report["calibration"]["source"] == "images"
    for field in ("resolution", "crop_pct", "interpolation", "mean", "std", "layout"):
        assert field in report["preprocess"]
    for a in report["artifacts"]:
        for field in ("file", "format", "precision", "runtime", "top1", "top5", "top1_drop",
                      "top1_agreement", "size_bytes", "latency_ms"):
            assert field in a, field
        assert 0 <= a["top1"] <= 100


def test_eval_command_reproduces_the_report(lite0_onnx, sample, tmp_path):
    folder, report = lite0_onnx
    result = eval_artifact(folder, "model_int8.onnx", sample, tmp_path / "eval.json")
    int8 = artifact(report, "int8")
    assert (result["top1"], result["top5"]) == (int8["top1"], int8["top5"])


def test_sensitivity_ranking_is_real(lite0_onnx):
    """The ranking's worst layer, quantized alone, costs more agreement than its best layer."""
    folder, report = lite0_onnx
    sens = report["sensitivity"]
    layers = sens["layers"]
    int8 = artifact(report, "int8")
    assert sens["quantizable_layers"] == len(layers) == int8["quantizable_layers"] == 50
    assert int8["kept_float"] == [] and "fallback" not in report
    worst, best = layers[0], layers[-1]
    assert worst["sqnr_db"] < best["sqnr_db"]
    assert worst["top1_agreement_alone"] < best["top1_agreement_alone"], (worst, best)
    html = (folder / "report.html").read_text()
    assert "Per-layer sensitivity" in html and "<polyline" in html
