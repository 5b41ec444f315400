"""The CLI end to end: compile without ../shared (packaged photos, no --val), determinism,
foreign-model eval, and user mistakes that must be one-line errors with no output written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from edgeeff.cli import main
from edgeeff.util import sha256_file

from .conftest import B0_TEST_WEIGHTS, QUICK, compile_model, needs_b0_weights


@pytest.fixture(scope="module")
def quick_compile(tmp_path_factory):
    folder, _ = compile_model(tmp_path_factory.mktemp("out"), "lite0", "onnx", *QUICK)
    return folder


@pytest.mark.slow
def test_compile_without_calib_or_val_uses_packaged_photos_and_says_so(quick_compile):
    report = json.loads((quick_compile / "report.json").read_text())
    assert report["accuracy_measured"] is False
    assert report["calibration"]["source"] == "package-sample"
    assert "scikit-image" in report["calibration"]["path"] and report["calibration"]["images"] == 9
    assert "not measured" in report["dataset"]["note"]
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert int8["top1"] is None and int8["top1_drop"] is None
    assert int8["latency_ms"]["batch"] == 1 and int8["size_bytes"] < 0.3 * 18.6e6
    assert "Accuracy was not measured" in (quick_compile / "report.md").read_text()
    conventions = report["model"]["weights"]["conventions"]  # the packaged Lite0 is lukemelas-named: TF
    assert (conventions["name"], conventions["how"], conventions["padding"]) == ("tf", "layout", "same")


@pytest.mark.slow
def test_latency_is_timed_in_turns_with_a_ratio_to_fp32(quick_compile):
    """Both files of the runtime timed in the same turns: the ratio is the INT8 median over the
    FP32 median of those turns, present and sane; the FP32 file has none; the tables show it."""
    report = json.loads((quick_compile / "report.json").read_text())
    fp32, int8 = (next(a for a in report["artifacts"] if a["precision"] == p) for p in ("fp32", "int8"))
    assert "ratio_to_fp32" not in fp32["latency_ms"] and "model_int8.onnx" in fp32["latency_ms"]["measured"]
    latency = int8["latency_ms"]
    assert latency["ratio_to_fp32"] == round(latency["median"] / fp32["latency_ms"]["median"], 3)
    assert 0.05 < latency["ratio_to_fp32"] < 20
    low, high = latency["spread"]
    assert low <= latency["median"] <= high == latency["p90"] and latency["runs"] >= 3
    assert f"{latency['ratio_to_fp32']:.2f}" in (quick_compile / "report.md").read_text()
    assert "x FP32" in (quick_compile / "report.html").read_text()


@pytest.mark.slow
def test_manifest_lists_every_file_with_its_hash(quick_compile):
    manifest = json.loads((quick_compile / "manifest.json").read_text())
    listed = {f["file"]: f for f in manifest["files"]}
    on_disk = {p.name for p in quick_compile.iterdir() if p.name != "manifest.json"}
    assert set(listed) == on_disk
    for name, entry in listed.items():
        assert entry["sha256"] == sha256_file(quick_compile / name)
    assert manifest["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert len((quick_compile / "labels.txt").read_text().splitlines()) == 1000
    assert not list(quick_compile.parent.glob(".*partial*"))  # no temporary folder left behind


@pytest.mark.slow
def test_int8_model_is_qdq_with_symmetric_per_channel_weights(quick_compile):
    model = onnx.load(str(quick_compile / "model_int8.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    conv_weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                      and inits.get(n.input[0]) is not None and inits[n.input[0]].dtype == np.int8
                      and inits[n.input[0]].ndim == 4]
    assert conv_weight_dq, "no int8 conv weights"
    for node in conv_weight_dq:
        zero_point = inits[node.input[2]]
        assert zero_point.size > 1 or inits[node.input[0]].shape[0] == 1  # per output channel
        assert not zero_point.any()  # symmetric
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 49


@pytest.mark.slow
def test_compiling_twice_gives_identical_int8_bytes(quick_compile, tmp_path):
    assert main(["compile", "--variant", "lite0", "--target", "onnx", "--out", str(tmp_path), *QUICK]) == 0
    again = tmp_path / "lite0-onnx"
    assert sha256_file(again / "model_int8.onnx") == sha256_file(quick_compile / "model_int8.onnx")
    assert sha256_file(again / "model_fp32.onnx") == sha256_file(quick_compile / "model_fp32.onnx")


@pytest.mark.slow
def test_eval_reads_foreign_1001_class_models(quick_compile, tmp_path):
    """A TF-style classifier: background class first. eval must detect and drop it."""
    model = onnx.load(str(quick_compile / "model_fp32.onnx"))
    graph = model.graph
    old_out = graph.output[0].name
    graph.node[-1].output[0] = "logits1000"
    graph.initializer.append(onnx.numpy_helper.from_array(np.full((1, 1), -100.0, np.float32), "bg"))
    graph.node.extend([
        helper.make_node("Shape", ["logits1000"], ["shape"], start=0, end=1),
        helper.make_node("Expand", ["bg", "shape_2d"], ["bg_batch"]),
        helper.make_node("Concat", ["bg_batch", "logits1000"], [old_out], axis=1),
    ])
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "one"))
    graph.node.insert(len(graph.node) - 2, helper.make_node("Concat", ["shape", "one"], ["shape_2d"], axis=0))
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1001
    foreign = tmp_path / "foreign" / "model.onnx"
    foreign.parent.mkdir()
    onnx.save(model, str(foreign))
    val = tmp_path / "val" / "n01443537"  # goldfish
    val.mkdir(parents=True)
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (64, 64), (200, 120 + i, 40)).save(val / f"{i}.png")
    out_json = tmp_path / "scores.json"
    assert main(["eval", str(foreign), "--val", str(tmp_path / "val"), "--mean", ".5", ".5", ".5",
                 "--std", ".5", ".5", ".5", "--json", str(out_json), "--quiet"]) == 0
    result = json.loads(out_json.read_text())
    assert result["label_offset"] == 1 and result["images"] == 3
    assert "ratio_to_fp32" not in result["latency_ms"]  # no FP32 twin beside a foreign model


@pytest.mark.slow
def test_eval_times_the_int8_file_in_turns_with_its_fp32_twin(quick_compile, tmp_path, capsys):
    val = tmp_path / "val" / "n01443537"
    val.mkdir(parents=True)
    from PIL import Image
    for i in range(2):
        Image.new("RGB", (64, 64), (200, 120 + i, 40)).save(val / f"{i}.png")
    out_json = tmp_path / "scores.json"
    assert main(["eval", str(quick_compile / "model_int8.onnx"), "--val", str(tmp_path / "val"),
                 "--json", str(out_json), "--quiet"]) == 0
    latency = json.loads(out_json.read_text())["latency_ms"]
    assert "model_fp32.onnx" in latency["measured"] and 0.05 < latency["ratio_to_fp32"] < 20
    assert f"{latency['ratio_to_fp32']:.2f}" in capsys.readouterr().out  # the table's x FP32 column


def _run(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeeff", *args], capture_output=True, text=True, cwd=tmp_path)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("args,message", [
    (["compile", "--variant", "b9", "--target", "onnx"], "--variant b9: unknown"),
    (["compile", "--variant", "lite0", "--target", "jetsonn"], "--target jetsonn: unknown"),
    (["compile", "--variant", "b3", "--target", "onnx"], "no weights for --variant b3"),
    (["compile", "--variant", "lite0", "--target", "onnx", "--calib", "nowhere"], "--calib nowhere: not a folder"),
    (["compile", "--variant", "lite0", "--target", "onnx", "--calib-method", "magic"], "--calib-method magic: unknown"),
    (["eval", "missing.onnx", "--val", "."], "missing.onnx: no such artifact file"),
    # argparse's own refusals, one line too (it would print the whole usage first)
    (["compile", "--variant", "lite0", "--target", "rpi", "--act", "gelu"],
     "argument --act: invalid choice: 'gelu' (choose from 'swish', 'hswish', 'relu6'); see edgeeff compile --help"),
    (["compile", "--variant", "lite0", "--target", "rpi", "--scale-groups", "always"],
     "argument --scale-groups: invalid choice: 'always'"),
    (["compile", "--variant", "lite0", "--target", "jetson", "--optimize", "rounding"],
     "--optimize rounding: the jetson-orin target takes ranges or refine; or leave --optimize off"),
    (["compile", "--variant", "lite0", "--target", "intel", "--optimize", "rounding"],
     "--optimize rounding: the intel target takes ranges or refine; or leave --optimize off"),
    (["compile", "--variant", "lite0", "--target", "onnx", "--optimize", "rounding", "--optimize-steps", "0"],
     "--optimize-steps 0: must be at least 1"),
    (["compile", "--variant", "lite0", "--target", "onnx", "--optimize", "ranges", "--optimize-refine-steps", "-1"],
     "--optimize-refine-steps -1: must be 0 (off) or more"),
    (["compile", "--variant", "lite0", "--target", "rpi", "--optimize", "refine", "--optimize-refine-steps", "5"],
     "--optimize refine is the refinement alone and needs at least 40 steps"),
    (["compile", "--variant", "lite0"], "the following arguments are required: --target"),
    (["compile", "--variant", "lite0", "--target", "onnx", "--calib-count", "many"], "--calib-count: invalid int value"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, args, message):
    code, stderr = _run(args, tmp_path)
    assert code == 2, stderr
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@needs_b0_weights
def test_b0_weights_compiled_as_lite0_are_one_line_naming_b0(tmp_path):
    """Issue 21's bar, without --quiet: the error is the only line printed, and nothing is written."""
    code, stderr = _run(["compile", "--variant", "lite0", "--weights", str(B0_TEST_WEIGHTS), "--target", "onnx",
                         "--calib-count", "8", "--out", "out"], tmp_path)
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert "use --variant b0" in stderr and str(B0_TEST_WEIGHTS) in stderr
    assert not (tmp_path / "out").exists()


def test_existing_output_folder_is_refused_without_force(tmp_path):
    (tmp_path / "out" / "lite0-onnx").mkdir(parents=True)
    (tmp_path / "out" / "lite0-onnx" / "keep.txt").write_text("mine")
    code, stderr = _run(["compile", "--variant", "lite0", "--target", "onnx", "--out", "out"], tmp_path)
    assert code == 2 and "--force" in stderr
    assert (tmp_path / "out" / "lite0-onnx" / "keep.txt").read_text() == "mine"


def test_option_choices_match_what_the_modules_accept():
    """edgeeff/choices.py is what the command line offers; the modules that act on a choice must
    accept exactly those values (device_preprocess cannot import choices: it ships standalone)."""
    from edgeeff import choices
    from edgeeff.device import device_preprocess
    from edgeeff.models import distill, weights

    assert tuple(distill.LEARNING_RATES) == choices.RECOVER_PARAMS
    assert tuple(device_preprocess.INTERPOLATIONS) == choices.INTERPOLATIONS
    assert set(weights.MAPPERS) == set(choices.WEIGHT_FORMATS) - {"auto"}
    assert tuple(weights.CONVENTIONS) == choices.CONVENTION_NAMES


@pytest.mark.slow
def test_several_targets_in_one_command_share_the_work_and_survive_a_failure(tmp_path, monkeypatch, capsys):
    """--target a,b,c: each target its own folder; the weights, images and FP32 export made once; a target
    that fails (intel takes no percentile recipe) is one line and the others are still written;
    the command exits 2 and prints the folders' tables."""
    import edgeeff.pipeline as pipeline
    from edgeeff.cli import main

    calls, exports = [], []
    real, real_export = pipeline.load_model, pipeline.export_onnx
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(pipeline, "export_onnx", lambda *a, **k: exports.append(a) or real_export(*a, **k))
    code = main(["compile", "--variant", "lite0", "--target", "onnx,intel,jetson", "--calib-method", "percentile",
                 *QUICK, "--out", str(tmp_path)])
    err = capsys.readouterr()
    assert code == 2, err
    assert len(calls) == 1  # one load for three targets
    # one FP32 export: Lite0 has no scale-group site, so jetson's graph is onnx's (its bytes reused;
    # jetson then writes its own opset-17 copy for TensorRT)
    assert len(exports) == 1
    assert (tmp_path / "lite0-onnx" / "report.json").is_file()
    assert (tmp_path / "lite0-jetson-orin" / "report.json").is_file()
    assert not (tmp_path / "lite0-intel").exists()
    assert "1 of 3 targets failed: intel: --calib-method percentile" in err.err
    assert "== lite0-onnx" in err.out and "== lite0-jetson-orin" in err.out
    assert (tmp_path / "report.html").is_file()


def test_target_all_names_every_target_file_once():
    from edgeeff.pipeline import expand_targets

    names = expand_targets("all")
    files = sorted((Path(__file__).resolve().parents[1] / "targets").glob("*.toml"))
    assert len(names) == len(files) == len(set(names))
    assert expand_targets("onnx, ort ,rpi") == ["onnx", "rpi"]  # aliases resolved, duplicates dropped
