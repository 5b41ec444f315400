"""The Python API (edgeeff.compile, edgeeff.evaluate): the CLI's options as keyword arguments, the
report and folder returned, quiet silent down to the file descriptors, mistakes as UserError with
the CLI's one-line messages, and `import edgeeff` without torch."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import edgeeff
from edgeeff import progress
from edgeeff.errors import UserError


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    """Four small photos in two ImageNet synset folders: enough to score, quick to compile."""
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    for synset in ("n01443537", "n01440764"):
        (root / synset).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(root / synset / f"{i}.png")
    return root


def test_quiet_compile_and_evaluate_return_results_and_print_nothing(tmp_path, val, capfd):
    report, folder = edgeeff.compile(variant="lite0", target="onnx", val=val, calib_count=8, latency_runs=2,
                                     out=tmp_path, quiet=True)
    out, err = capfd.readouterr()  # fd level: C++ runtimes' logs would be caught as well as print()
    assert (out, err) == ("", "")
    assert folder == tmp_path / "lite0-onnx"
    assert report == json.loads((folder / "report.json").read_text())
    assert report["dataset"]["images"] == 4 and report["calibration"]["requested"] == 8
    # two validation classes (<= 100): top-1 per class for the reference and every artifact
    per_class = report["per_class"]["classes"]
    assert [(c["name"], c["images"]) for c in per_class] == [("tench", 2), ("goldfish", 2)]
    assert set(per_class[0]["top1"]) == {"reference", "model_fp32.onnx", "model_int8.onnx"}
    assert all(a["top_score"]["images"] == 4 for a in report["artifacts"])
    assert "Top-1 per class" in (folder / "report.html").read_text()

    scores = edgeeff.evaluate(folder / "model_int8.onnx", val=str(val), threads=1, quiet=True)
    assert capfd.readouterr() == ("", "")
    int8 = next(a for a in report["artifacts"] if a["file"] == "model_int8.onnx")
    assert scores["images"] == 4 and scores["top1"] == int8["top1"]
    # Not quiet, the same call prints the CLI's table: the silence above is quiet's doing.
    edgeeff.evaluate(folder / "model_int8.onnx", val=val, threads=1, json=tmp_path / "scores.json")
    assert "model_int8.onnx" in capfd.readouterr().out
    assert json.loads((tmp_path / "scores.json").read_text())["top1"] == scores["top1"]


def test_quiet_restores_the_terminal_after_an_error(capfd):
    before = progress.QUIET
    with pytest.raises(UserError, match="--variant lite9: unknown"):
        edgeeff.compile(variant="lite9", target="onnx", quiet=True)
    assert progress.QUIET == before
    print("still here")
    print("and here", file=sys.stderr)
    assert capfd.readouterr() == ("still here\n", "and here\n")


@pytest.mark.parametrize("options,message", [
    ({"variant": "lite0", "target": "onnx", "calib": "nowhere"}, "--calib nowhere: not a folder"),
    ({"variant": "lite0", "target": "onnx", "act": "gelu"}, "argument --act: invalid choice: 'gelu'"),
    ({"variant": "lite0", "target": "jetsonn"}, "--target jetsonn: unknown"),
    ({"variant": "lite0", "target": "onnx", "calib_count": "many"}, "argument --calib-count: invalid int value"),
])
def test_mistakes_raise_the_clis_one_line_message(tmp_path, options, message, capfd):
    with pytest.raises(UserError) as err:
        edgeeff.compile(out=tmp_path / "out", quiet=True, **options)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 2
    assert capfd.readouterr() == ("", "")
    assert not (tmp_path / "out").exists()


def test_evaluate_mistakes_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such artifact file"):
        edgeeff.evaluate(tmp_path / "missing.onnx", val=tmp_path)


def test_a_misspelt_option_is_a_type_error_naming_it_and_never_runs(tmp_path):
    # argparse alone would take calib_c=8 for --calib-count 8 (an abbreviation) and compile.
    for typo in ("calib_c", "calib_cont"):
        with pytest.raises(TypeError, match=f"unknown option\\(s\\) {typo}"):
            edgeeff.compile(variant="lite0", target="onnx", out=tmp_path, **{typo: 8})
    assert not list(tmp_path.iterdir())


def test_import_edgeeff_is_light_and_lists_the_api():
    code = ("import sys, edgeeff; assert 'torch' not in sys.modules, 'import edgeeff'; "
            "assert {'compile', 'evaluate'} <= set(dir(edgeeff)); edgeeff.compile; edgeeff.evaluate; "
            "assert 'torch' not in sys.modules, 'edgeeff.compile'; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout == "ok\n", proc.stderr
