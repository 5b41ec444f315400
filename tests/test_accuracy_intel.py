"""The intel target's bars on real ImageNet photos (../shared): Lite0 INT8 IR in OpenVINO."""

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

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytestmark = [needs_shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def lite0_intel(tmp_path_factory, sample):
    return compile_model(tmp_path_factory.mktemp("out"), "lite0", "intel", *on_sample(sample),
                         "--latency-runs", "5", "--quiet")


def test_fp32_ir_matches_the_pytorch_reference(lite0_intel):
    _, report = lite0_intel
    check_fp32_matches_reference(report)


def test_int8_ir_meets_the_bar(lite0_intel):
    _, report = lite0_intel
    int8 = artifact(report, "int8")
    check_int8_meets_the_bar(int8)
    assert int8["quantization"]["subset_size"] == 300


def test_eval_command_reproduces_the_report(lite0_intel, sample, tmp_path):
    folder, report = lite0_intel
    result = eval_artifact(folder, "model_int8.xml", sample, tmp_path / "eval.json")
    int8 = artifact(report, "int8")
    assert (result["top1"], result["top5"]) == (int8["top1"], int8["top5"])
    assert result["runtime"] == int8["runtime"]
