"""The intel target (OpenVINO IR) without ../shared: artifacts, manifest, determinism, the
device-side script and docs snippet, and `edgeeff eval` of foreign IRs."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgeeff.cli import main
from edgeeff.util import sha256_file

from .conftest import QUICK, REPO, compile_model, copy_to_device, run_on_device

openvino = pytest.importorskip("openvino")
pytest.importorskip("nncf")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_intel(tmp_path_factory):
    folder, _ = compile_model(tmp_path_factory.mktemp("out"), "lite0", "intel", *QUICK)
    return folder


def _photos(n: int) -> list[Path]:
    """Real photos scikit-image ships (what the quick compile calibrated on)."""
    from edgeeff.data.images import default_calibration_paths

    return default_calibration_paths()[:n]


def _runner_predictions(folder: Path, xml: str, photos: list[Path]) -> np.ndarray:
    from edgeeff.backends import openvino as ov_backend
    from edgeeff.data.preprocess import crop_image, load_rgb
    from edgeeff.evaluation_cli import spec_from_manifest

    spec = spec_from_manifest(folder / "manifest.json", xml)
    runner = ov_backend.open_runner(folder / xml, 2, spec)
    crops = np.stack([crop_image(load_rgb(p), spec) for p in photos])
    return np.concatenate([runner.predict(spec.to_model_input(crops[i:i + 1])) for i in range(len(crops))])


def test_ir_pair_report_and_manifest(quick_intel):
    report = json.loads((quick_intel / "report.json").read_text())
    manifest = json.loads((quick_intel / "manifest.json").read_text())
    assert report["backend"] == "openvino" and report["target"] == "intel"
    by_precision = {a["precision"]: a for a in report["artifacts"]}
    assert set(by_precision) == {"fp32", "int8"}
    for precision, artifact in by_precision.items():
        xml = quick_intel / artifact["file"]
        assert artifact["format"] == "openvino" and xml.suffix == ".xml"
        assert artifact["weights_file"] == xml.with_suffix(".bin").name
        assert artifact["size_bytes"] == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        assert re.fullmatch(r"openvino \d+\.\d+\.\d+ \(CPU, f32\)", artifact["runtime"]), artifact["runtime"]
        assert artifact["input"] == {"layout": "NHWC", "dtype": "uint8"}
    assert by_precision["int8"]["size_bytes"] < 0.3 * by_precision["fp32"]["size_bytes"]
    q = by_precision["int8"]["quantization"]
    assert q["quantizer"].startswith("nncf ") and q["convert_from"] == "onnx"
    assert (q["preset"], q["overflow_fix"], q["fast_bias_correction"], q["subset_size"]) == ("performance", "disable", True, 9)
    entries = {a["file"]: a["input"] for a in manifest["artifacts"]}
    assert entries == {"model_fp32.xml": {"layout": "NHWC", "dtype": "uint8"},
                       "model_int8.xml": {"layout": "NHWC", "dtype": "uint8"}}
    assert {f["file"] for f in manifest["files"]} >= {"model_fp32.xml", "model_fp32.bin", "model_int8.xml", "model_int8.bin",
                                                      "openvino_classify.py", "device_preprocess.py"}


def test_int8_ir_takes_uint8_nhwc_and_is_quantized(quick_intel):
    model = openvino.Core().read_model(str(quick_intel / "model_int8.xml"))
    assert model.inputs[0].get_element_type() == openvino.Type.u8
    assert list(model.inputs[0].get_partial_shape().to_shape()) == [1, 224, 224, 3]
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    convs = types.count("Convolution") + types.count("GroupConvolution")
    assert convs == 49 and types.count("FakeQuantize") >= convs  # every conv's input activation is quantized
    int8_weights = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"
                    and op.get_output_element_type(0) == openvino.Type.i8]
    assert len(int8_weights) >= 50  # 49 convs + the classifier


def test_compiling_twice_gives_identical_ir_bytes(quick_intel, tmp_path):
    assert main(["compile", "--variant", "lite0", "--target", "intel", "--out", str(tmp_path), *QUICK]) == 0
    again = tmp_path / "lite0-intel"
    for name in ("model_int8.bin", "model_int8.xml", "model_fp32.bin", "model_fp32.xml"):
        assert sha256_file(again / name) == sha256_file(quick_intel / name), name


def test_device_script_and_docs_snippet_match_the_runner(quick_intel, tmp_path):
    """openvino_classify.py as shipped in the output folder and the snippet in docs/intel.md, run
    on a 'device' copy of the folder without edgeeff, predict what edgeeff's runner predicts, on
    photos and on an image with alpha (decoded over white, as edgeeff does)."""
    from PIL import Image

    rng = np.random.default_rng(2)
    photos = _photos(3)
    rgb = np.asarray(Image.open(photos[0]).convert("RGB").resize((150, 110)))
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, rgb.shape[:2], np.uint8)])).save(tmp_path / "alpha.png")
    photos.append(tmp_path / "alpha.png")
    expected = _runner_predictions(quick_intel, "model_int8.xml", photos)
    device = copy_to_device(quick_intel, tmp_path / "device", "model_int8.xml", "model_int8.bin", "manifest.json",
                            "labels.txt", "openvino_classify.py", "device_preprocess.py")
    proc = run_on_device(device / "openvino_classify.py", device / "model_int8.xml", *photos, "--json",
                         cwd=tmp_path / "elsewhere", timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["top5"][0] for line in lines] == expected.argmax(1).tolist()
    assert np.allclose(np.array([line["logits"] for line in lines]), expected, atol=1e-4)

    docs = (REPO / "docs" / "intel.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", docs, re.S).group(1)
    (tmp_path / "snippet.py").write_text(snippet)
    proc = run_on_device(tmp_path / "snippet.py", device / "model_int8.xml", photos[-1], cwd=tmp_path / "elsewhere",
                         timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[0]) == int(expected[-1].argmax()), proc.stdout


def test_eval_reads_foreign_irs_with_a_background_class(quick_intel, tmp_path):
    """An IR without manifest.json, float NCHW input and 1001 outputs (background first)."""
    from openvino import opset13 as ops

    # A float NCHW classifier (no baked preprocessing): the exported ONNX converted as is.
    from edgeeff.models.export import export_onnx
    from edgeeff.models.weights import load_model

    torch_model, _ = load_model("lite0", None, "auto")
    export_onnx(torch_model, 224, tmp_path / "lite0.onnx")
    model = openvino.convert_model(str(tmp_path / "lite0.onnx"))
    model.reshape([1, 3, 224, 224])
    result = model.get_results()[0]
    background = ops.constant(np.full((1, 1), -100.0, np.float32))
    with_background = ops.concat([background, result.input_value(0)], axis=1)
    result.input(0).replace_source_output(with_background.output(0))
    model.validate_nodes_and_infer_types()
    (tmp_path / "foreign").mkdir()
    openvino.save_model(model, str(tmp_path / "foreign" / "net.xml"), compress_to_fp16=False)
    photos = _photos(3)
    val = tmp_path / "val" / "n01443537"
    val.mkdir(parents=True)
    for p in photos:
        (val / p.name).write_bytes(p.read_bytes())
    out_json = tmp_path / "scores.json"
    assert main(["eval", str(tmp_path / "foreign" / "net.xml"), "--val", str(tmp_path / "val"), "--mean",
                 ".5", ".5", ".5", "--std", ".5", ".5", ".5", "--json", str(out_json), "--quiet"]) == 0
    result = json.loads(out_json.read_text())
    assert result["label_offset"] == 1 and result["images"] == 3
    assert result["preprocess"]["layout"] == "NCHW" and result["preprocess"]["resolution"] == 224
    # Our own IR, moved away from its manifest: u8 NHWC input detected from the IR itself.
    for name in ("model_int8.xml", "model_int8.bin"):
        (tmp_path / "foreign" / name).write_bytes((quick_intel / name).read_bytes())
    assert main(["eval", str(tmp_path / "foreign" / "model_int8.xml"), "--val", str(tmp_path / "val"),
                 "--mean", ".5", ".5", ".5", "--std", ".5", ".5", ".5", "--json", str(out_json), "--quiet"]) == 0
    result = json.loads(out_json.read_text())
    assert result["label_offset"] == 0 and result["preprocess"]["layout"] == "NHWC"
