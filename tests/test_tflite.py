"""The LiteRT targets (rpi, android, ios): full-integer .tflite files, read back from the
flatbuffer itself, determinism, foreign-model eval, FP16, and the device-side script.

One quick compile (the packaged photos, no --val) is shared by the module; the accuracy bars on
real images are in test_tflite_accuracy.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed")
pytest.importorskip("litert_torch", reason="the tflite extra is not installed")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402

from edgeeff.backends import litert  # noqa: E402
from edgeeff.cli import main  # noqa: E402
from edgeeff.models.family import spec_for_variant  # noqa: E402
from edgeeff.profiles import get_target  # noqa: E402
from edgeeff.util import sha256_file  # noqa: E402

from .conftest import compile_model  # noqa: E402

QUICK = ["--calib-count", "9", "--latency-runs", "3", "--threads", "2", "--quiet"]
TFLITE_FILES = ("model_fp32.tflite", "model_int8.tflite")
# What an integer-only classifier may contain: the integer kernels of XNNPACK / the reference ops.
INTEGER_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MUL", "MEAN", "FULLY_CONNECTED", "QUANTIZE",
               "RESHAPE", "PAD", "LOGISTIC", "HARD_SWISH", "AVERAGE_POOL_2D"}


@pytest.fixture(scope="module")
def rpi_quick(tmp_path_factory):
    folder, _ = compile_model(tmp_path_factory.mktemp("out"), "lite0", "rpi", *QUICK)
    return folder


def read_graph(path: Path):
    """(op names, tensors) straight from the .tflite flatbuffer: no interpreter involved."""
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    assert model.SubgraphsLength() == 1
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        ops.append((op_names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())],
                    [type_names[graph.Tensors(t).Type()] for t in op.InputsAsNumpy() if t >= 0],
                    [type_names[graph.Tensors(t).Type()] for t in op.OutputsAsNumpy()],
                    [graph.Tensors(t) for t in op.InputsAsNumpy() if t >= 0]))
    tensors = [graph.Tensors(i) for i in range(graph.TensorsLength())]
    io_types = ([type_names[graph.Tensors(i).Type()] for i in graph.InputsAsNumpy()],
                [type_names[graph.Tensors(i).Type()] for i in graph.OutputsAsNumpy()])
    return ops, [type_names[t.Type()] for t in tensors], io_types


@pytest.mark.slow
def test_rpi_int8_model_is_integer_only(rpi_quick):
    """Every op computes in integers: nothing can fall back to float on the Pi. The one float
    tensor is the logits, written by the final DEQUANTIZE of the int16 classifier output
    (float logits: 8-bit ones tie and saturate the top score)."""
    ops, tensor_types, (in_types, out_types) = read_graph(rpi_quick / "model_int8.tflite")
    assert [t for t in tensor_types if t.startswith("FLOAT")] == ["FLOAT32"]
    names = [name for name, *_ in ops]
    assert set(names) <= INTEGER_OPS | {"DEQUANTIZE"}, set(names) - INTEGER_OPS
    assert names.count("CONV_2D") == 33 and names.count("DEPTHWISE_CONV_2D") == 16
    assert "TRANSPOSE" not in names
    assert names[-3:] == ["QUANTIZE", "FULLY_CONNECTED", "DEQUANTIZE"]  # int8 -> int16, classifier, float
    assert ops[-1][1:3] == (["INT16"], ["FLOAT32"]) and ops[-2][2] == ["INT16"]
    for name, ins, outs, _ in ops[:-1]:
        assert all(t in ("INT8", "UINT8", "INT16", "INT32", "INT64") for t in ins + outs), (name, ins, outs)
    # The Pi's profile asks for int8 input: the quantizer's graph with nothing added at its start.
    assert get_target("rpi").input_dtype == "int8"
    assert in_types == ["INT8"] and out_types == ["FLOAT32"]
    assert names.count("QUANTIZE") == 1
    summary = litert.graph_summary(rpi_quick / "model_int8.tflite")
    assert summary["integer_only"] and summary["float_logits"]


@pytest.mark.slow
def test_io_uint8_adds_exact_requantizations_at_the_ends(rpi_quick, tmp_path):
    """`--io uint8`: the same model behind two integer QUANTIZE ops (uint8 <-> int8), giving the
    default int8-I/O file's logits bit for bit; the manifest and report say uint8."""
    folder, report = compile_model(tmp_path, "lite0", "rpi", *QUICK, "--io", "uint8")
    ops, tensor_types, (in_types, out_types) = read_graph(folder / "model_int8.tflite")
    names = [name for name, *_ in ops]
    # the logits stay float (float_logits): uint8 only at the input
    assert in_types == ["UINT8"] and out_types == ["FLOAT32"]
    assert [t for t in tensor_types if t.startswith("FLOAT")] == ["FLOAT32"]
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE"
    assert names[1:] == [name for name, *_ in read_graph(rpi_quick / "model_int8.tflite")[0]]
    assert report["target_profile"]["input_dtype"] == "uint8"
    entry = next(a for a in json.loads((folder / "manifest.json").read_text())["artifacts"]
                 if a["file"] == "model_int8.tflite")
    # Lite0's mean = std = 0.5: the uint8 input's quantization is 2/255 with zero point 127, so the
    # pixel bytes themselves are the input to within half a step.
    assert entry["input"]["dtype"] == "uint8" and entry["output"]["dtype"] == "float32"
    assert abs(entry["input"]["scale"] - 2 / 255) < 1e-6 and entry["input"]["zero_point"] == 127
    spec = spec_for_variant("lite0").with_layout("NHWC", "float32")
    x = spec.to_model_input(np.random.default_rng(3).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8))
    int8_io = litert.open_runner(rpi_quick / "model_int8.tflite", 2, spec)
    uint8_io = litert.open_runner(folder / "model_int8.tflite", 2, spec)
    assert uint8_io.input["quantization"][1] == int8_io.input["quantization"][1] + 128
    assert np.array_equal(int8_io.predict(x), uint8_io.predict(x))


def test_io_is_refused_where_the_input_type_is_fixed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeeff", "compile", "--variant", "lite0", "--target", "onnx",
                           "--io", "uint8"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--io uint8" in proc.stderr and "rpi" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_weights_are_int8_per_channel_symmetric(rpi_quick):
    ops, _, _ = read_graph(rpi_quick / "model_int8.tflite")
    checked = 0
    for name, _, _, inputs in ops:
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        weight = inputs[1]
        assert weight.Type() == schema.TensorType.INT8
        quant = weight.Quantization()
        channels = weight.ShapeAsNumpy()[3 if name == "DEPTHWISE_CONV_2D" else 0]
        assert quant.ScaleLength() == channels  # one scale per output channel
        assert not quant.ZeroPointAsNumpy().any()  # symmetric
        checked += 1
    assert checked == 49


@pytest.mark.slow
def test_int8_file_is_under_30_percent_of_float(rpi_quick):
    report = json.loads((rpi_quick / "report.json").read_text())
    sizes = {a["precision"]: a["size_bytes"] for a in report["artifacts"]}
    assert set(sizes) == {"fp32", "int8"}  # no FP16 for the Pi: it has no GPU delegate
    assert sizes["int8"] <= 0.30 * sizes["fp32"], sizes
    assert sizes["fp32"] == (rpi_quick / "model_fp32.tflite").stat().st_size


@pytest.mark.slow
def test_manifest_carries_what_the_device_needs(rpi_quick):
    manifest = json.loads((rpi_quick / "manifest.json").read_text())
    assert {f["file"] for f in manifest["files"]} == {*TFLITE_FILES, "labels.txt", "report.json", "report.md", "report.html",
                                                     "rpi_classify.py", "device_preprocess.py"}
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model_int8.tflite")
    assert entry["format"] == "tflite" and entry["precision"] == "int8"
    assert entry["input"]["layout"] == "NHWC" and entry["input"]["dtype"] == "int8"
    assert entry["input"]["shape"] == [1, 224, 224, 3]
    # Lite0's mean = std = 0.5: the int8 input's quantization is 2/255 with zero point -1, so the
    # input is the pixel byte minus 128 to within half a step.
    assert abs(entry["input"]["scale"] - 2 / 255) < 1e-6 and entry["input"]["zero_point"] == -1
    assert entry["output"]["dtype"] == "float32" and "scale" not in entry["output"]  # float logits
    # and the numbers are the file's own
    it = litert.interpreter(rpi_quick / "model_int8.tflite", 1)
    scale, zero = it.get_input_details()[0]["quantization"]
    assert (entry["input"]["scale"], entry["input"]["zero_point"]) == (pytest.approx(scale), zero)
    fp32 = next(a for a in manifest["artifacts"] if a["file"] == "model_fp32.tflite")
    assert fp32["input"]["dtype"] == "float32"
    assert manifest["preprocess"]["resize_size"] == 256 and manifest["labels"]["file"] == "labels.txt"


@pytest.mark.slow
def test_compiling_twice_gives_identical_tflite_bytes(rpi_quick, tmp_path):
    assert main(["compile", "--variant", "lite0", "--target", "rpi4", "--out", str(tmp_path), *QUICK]) == 0
    again = tmp_path / "lite0-rpi"
    for name in TFLITE_FILES:
        assert sha256_file(again / name) == sha256_file(rpi_quick / name), name


@pytest.mark.slow
def test_fp16_model_for_phone_gpus(rpi_quick, tmp_path):
    """android/ios also ship FP16 (the same conversion the build runs for them)."""
    assert get_target("android").quantization["fp16"] and get_target("ios").quantization["fp16"]
    assert not get_target("rpi").quantization.get("fp16")
    fp16 = tmp_path / "model_fp16.tflite"
    litert.quantize_fp16(rpi_quick / "model_fp32.tflite", fp16)
    fp32_size = (rpi_quick / "model_fp32.tflite").stat().st_size
    assert 0.45 * fp32_size < fp16.stat().st_size < 0.55 * fp32_size
    _, tensor_types, (in_types, out_types) = read_graph(fp16)
    assert "FLOAT16" in tensor_types and in_types == out_types == ["FLOAT32"]
    spec = spec_for_variant("lite0").with_layout("NHWC", "float32")
    crops = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    x = spec.to_model_input(crops)
    a = litert.open_runner(rpi_quick / "model_fp32.tflite", 2, spec).predict(x)
    b = litert.open_runner(fp16, 2, spec).predict(x)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


class Tiny:
    """A small NCHW classifier with 1001 outputs (background first, like TF's)."""

    @staticmethod
    def build():
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
                self.fc = torch.nn.Linear(8, 1001)

            def forward(self, x):
                return self.fc(torch.nn.functional.relu6(self.conv(x)).mean((2, 3)))

        torch.manual_seed(0)
        return Net().eval()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    float_path = litert.convert_float(Tiny.build(), 32, folder / "tiny_fp32.tflite")
    calib = np.random.default_rng(1).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
    litert.quantize_int8(float_path, folder / "tiny_int8io.tflite", calib, {"method": "sample_percentile"},
                         quiet=True)
    litert.int8_io_to_uint8(folder / "tiny_int8io.tflite", folder / "tiny_uint8io.tflite")
    return folder


@pytest.mark.slow
def test_uint8_io_is_the_int8_model_exactly(tiny_models):
    """The uint8 twin (integer QUANTIZE at both ends) gives the very same logits as the int8 model."""
    spec = spec_for_variant("lite0").with_layout("NHWC", "float32")
    x = np.random.default_rng(2).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    int8_io = litert.open_runner(tiny_models / "tiny_int8io.tflite", 1, spec)
    uint8_io = litert.open_runner(tiny_models / "tiny_uint8io.tflite", 1, spec)
    assert int8_io.input["dtype"] == np.int8 and uint8_io.input["dtype"] == np.uint8
    assert uint8_io.input["quantization"][1] == int8_io.input["quantization"][1] + 128
    assert np.array_equal(int8_io.predict(x), uint8_io.predict(x))
    _, tensor_types, _ = read_graph(tiny_models / "tiny_uint8io.tflite")
    assert not [t for t in tensor_types if t.startswith("FLOAT")]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_fp32.tflite", "tiny_uint8io.tflite"])
def test_eval_reads_foreign_tflite_with_1001_classes(tiny_models, tmp_path, name):
    """A foreign .tflite (no manifest): NHWC, float or uint8 input, background class first."""
    assert litert.inspect_input(tiny_models / name) == {"layout": "NHWC", "resolution": 32, "num_outputs": 1001}
    val = tmp_path / "val" / "n01443537"  # goldfish
    val.mkdir(parents=True)
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (64, 48), (200, 120 + i, 40)).save(val / f"{i}.png")
    out_json = tmp_path / "scores.json"
    assert main(["eval", str(tiny_models / name), "--val", str(tmp_path / "val"), "--mean", ".5", ".5", ".5",
                 "--std", ".5", ".5", ".5", "--json", str(out_json), "--quiet"]) == 0
    result = json.loads(out_json.read_text())
    assert result["label_offset"] == 1 and result["images"] == 3
    assert result["runtime"].startswith("ai-edge-litert") and result["preprocess"]["layout"] == "NHWC"


def test_litert_rejects_calibration_it_does_not_implement(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeeff", "compile", "--variant", "lite0", "--target", "rpi",
                           "--calib-method", "entropy"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "--calib-method entropy" in proc.stderr and "Traceback" not in proc.stderr


def test_targets_are_listed():
    for name, alias in (("rpi", "rpi5"), ("android", "android"), ("ios", "ios")):
        profile = get_target(alias)
        assert profile.name == name and profile.backend == "litert" and profile.layout == "NHWC"
        assert profile.input_dtype in ("int8", "uint8") and profile.calibration == "sample_percentile"


def test_device_script_does_not_import_edgeeff():
    import re

    source = (Path(__file__).resolve().parents[1] / "edgeeff" / "device" / "rpi_classify.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+edgeeff\b", source, re.MULTILINE)
    assert "ai_edge_litert.interpreter" in source and "tflite_runtime.interpreter" in source
    # its preprocessing is edgeeff's own file, imported by module name from beside the script
    assert re.search(r"^from device_preprocess import .*\bcrop\b.*\bload_rgb\b", source, re.MULTILINE)


@pytest.mark.slow
def test_shipped_script_classifies_as_edgeeff_does(rpi_quick, tmp_path):
    """rpi_classify.py and device_preprocess.py as shipped in the output folder, copied to a
    'device' and run there without edgeeff: the same classes and scores as edgeeff's runner on
    edgeeff's own crops, photos and odd image modes (alpha, 16-bit) alike."""
    from PIL import Image

    from edgeeff.data.images import crop_all, default_calibration_paths
    from edgeeff.data.preprocess import PreprocessSpec

    from .conftest import copy_to_device, run_on_device

    rng = np.random.default_rng(1)
    photos = default_calibration_paths()[:3]
    Image.fromarray(np.dstack([np.asarray(Image.open(photos[0]).convert("RGB").resize((120, 90))),
                               rng.integers(0, 256, (90, 120), np.uint8)])).save(tmp_path / "alpha.png")
    Image.fromarray(rng.integers(0, 65536, (70, 50), np.uint16)).save(tmp_path / "deep16.png")
    images = [*photos, tmp_path / "alpha.png", tmp_path / "deep16.png"]
    device = copy_to_device(rpi_quick, tmp_path / "pi", "model_int8.tflite", "manifest.json", "labels.txt",
                            "rpi_classify.py", "device_preprocess.py")
    out = tmp_path / "pred.json"
    proc = run_on_device(device / "rpi_classify.py", device / "model_int8.tflite", *images, "--threads", "2",
                         "--top", "3", "--json", out, cwd=tmp_path / "elsewhere")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    spec = PreprocessSpec.from_dict(json.loads((rpi_quick / "manifest.json").read_text())["preprocess"])
    _, crops, _ = crop_all(images, spec, "val", quiet=True)
    runner = litert.open_runner(rpi_quick / "model_int8.tflite", 2, spec)
    logits = runner.predict(runner.spec.to_model_input(crops))
    got = np.array([[t["class"] for t in p["top"]] for p in result["predictions"]])
    assert [Path(p["file"]) for p in result["predictions"]] == images
    assert np.array_equal(got[:, 0], logits.argmax(1))
    scores = np.array([[t["score"] for t in p["top"]] for p in result["predictions"]])
    assert np.allclose(scores, np.take_along_axis(logits, got, axis=1), atol=1e-5)


@pytest.mark.parametrize("name", ["rpi", "android", "ios"])
def test_swish_models_get_the_swish_recipe_and_relu6_keeps_the_default(name):
    from edgeeff.profiles import get_recipe

    profile = get_target(name)
    default = get_recipe(profile.calibration)
    swish_recipe = profile.raw["calibration_by_activation"]["swish"]
    from edgeeff.profiles import recipe_for_model

    class Model:  # what recipe_for_model reads: describe()["act"]
        def __init__(self, act):
            self.act = act

        def describe(self):
            return {"act": self.act}

    picked = recipe_for_model(profile, default, Model("swish"))
    assert picked["name"] == swish_recipe != default["name"]
    assert picked["method"] in litert.RECIPE_METHODS
    assert recipe_for_model(profile, default, Model("relu6")) is default
    assert recipe_for_model(profile, default, Model(None)) is default
    chosen = get_recipe("minmax") if default["name"] != "minmax" else get_recipe("sample_percentile")
    assert recipe_for_model(profile, chosen, Model("swish")) is chosen  # --calib-method wins


@pytest.mark.parametrize("name", ["rpi", "android", "ios"])
def test_bias_correction_is_on_for_relu6_models_only(name):
    """Measured (docs/quantization.md): Lite0's KL to FP32 fell by half and more; the B0 swish + SE
    model, whose range search does not simulate it, gained nothing. Hard-swish: not measured, off."""
    from edgeeff.models.builder import build_model
    from edgeeff.profiles import quantization_for_model

    profile = get_target(name)
    assert quantization_for_model(profile, build_model("lite0"))["bias_correction"] is True
    assert quantization_for_model(profile, build_model("b0"))["bias_correction"] is False
    assert quantization_for_model(profile, build_model("b0", act="hswish"))["bias_correction"] is False


def test_image_statistics_are_the_calibrators_to_the_bit(tmp_path):
    """litert.image_statistics reads each tensor's min and max in place instead of through
    ai-edge-quantizer's calibrator (6x faster): the same tensors, shapes, dtypes and values as the
    calibrator fed every image with edgeeff's per-image update, on a swish + SE model."""
    from ai_edge_quantizer import calibrator

    from .test_variants import RES, _crops, _model, _spec

    float_path = litert.convert_float(_model(se=True), RES, tmp_path / "fp32.tflite")
    inputs = _spec().with_layout("NHWC", "float32").to_model_input(_crops(7, seed=4))
    quantizer = litert._int8_quantizer(float_path)
    signatures = litert.interpreter(float_path, 1).get_signature_list()
    key = next(iter(signatures))
    input_name = signatures[key]["inputs"][0]
    cal = calibrator.Calibrator(quantizer._float_model_buffer, num_threads=1, qsv_update_func=litert._keep_every_sample)
    for x in inputs:
        cal.calibrate({key: [{input_name: x[None].astype(np.float32)}]}, quantizer._recipe_manager)
    expected = cal.get_model_qsvs()

    got = litert.image_statistics(float_path, inputs, threads=1, quiet=True)

    assert got.keys() == expected.keys() and len(got) > 10
    for name, qsv in expected.items():
        assert len(got[name]["all_min"]) == len(inputs)
        for field in ("min", "max", "all_min", "all_max"):
            a, b = np.asarray(qsv[field]), np.asarray(got[name][field])
            assert a.dtype == b.dtype and np.array_equal(a, b), (name, field)
