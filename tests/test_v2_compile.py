"""EfficientNetV2 compiles end to end: V2-B0 with random weights and a tiny calibration set."""

import json

import pytest

from edgeeff.cli import main

TARGETS = ("onnx", "intel", "rpi", "android", "jetson-orin")


@pytest.mark.slow
def test_v2_b0_random_weights_compiles_for_every_target_and_says_its_agreement_means_nothing(tmp_path, capsys):
    """One command, the five targets (the activation-range search off: it is tested on B0 and would
    triple the time); the TensorRT-bound QDQ model passes the rules check."""
    assert main(["compile", "--variant", "tf_efficientnetv2_b0", "--target", ",".join(TARGETS), "--out", str(tmp_path),
                 "--random-weights", "--calib-count", "4", "--latency-runs", "3", "--optimize", "off"]) == 0
    note = "mean nothing for a trained model"
    for target in TARGETS:
        folder = tmp_path / f"v2-b0-{target}"  # the alias compiles under the variant's own name
        report = json.loads((folder / "report.json").read_text())
        assert report["variant"] == "v2-b0" and report["target"] == target
        assert report["model"]["parameters"] == 7_139_704 and report["preprocess"]["crop_pct"] == 0.875
        assert {"fp32", "int8"} <= {a["precision"] for a in report["artifacts"]}
        assert all((folder / a["file"]).is_file() for a in report["artifacts"] if a.get("verified", True))
        assert any(note in w for w in report["warnings"])
        assert note in (folder / "report.md").read_text()
        assert json.loads((folder / "manifest.json").read_text())
    qdq = json.loads((tmp_path / "v2-b0-jetson-orin" / "report.json").read_text())["artifacts"]
    rules = next(a for a in qdq if a["file"] == "model_qdq.onnx")["quantization"]["tensorrt_rules_check"]
    assert rules["passed"] and rules["int8_weight_tensors"] == 92
    assert "note: random weights" in capsys.readouterr().out


def test_v2_surgery_and_scale_group_sites():
    """--act and --se remove work on V2; scale groups (producer -> depthwise) only in MBConv blocks."""
    import numpy as np

    from edgeeff.models.builder import build_model
    from edgeeff.models.family import VARIANTS, block_plan, spec_for_variant
    from edgeeff.models.surgery import remove_se, swap_activation
    from edgeeff.quant.scale_groups import sites

    model = build_model("v2-b0")
    mbconv = [i for i, p in enumerate(block_plan(VARIANTS["v2-b0"])) if p.kind == "mbconv"]
    assert [s.block for s in sites(model)] == mbconv  # the Fused blocks 0-4 have no depthwise conv
    assert swap_activation(model, "hswish") == 55 and model.act_name == "hswish"
    crops = np.random.default_rng(0).integers(0, 255, (4, 224, 224, 3), dtype=np.uint8)
    record = remove_se(model, crops, spec_for_variant("v2-b0"))
    assert [r["block"] for r in record] == mbconv and not any(b.se for b in model.blocks)
