"""What a user in CI or on a laptop must never see: a traceback for their mistake, a half-written
folder, a report that changes between identical runs. Issue 6's bars, tested."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from edgeeff.cli import main

QUICK = ["--calib-count", "9", "--latency-runs", "2", "--quiet"]


def _photo(path: Path, mode="RGB", size=(96, 80)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257)).save(path)
    else:
        rgb.convert(mode).save(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for i in range(3):
        _photo(root / "calib" / "a" / f"{i}.jpg")
    for synset in ("n01443537", "n01440764"):
        _photo(root / "val" / synset / "x.png")
    (root / "empty").mkdir()
    (root / "corrupt" / "sub").mkdir(parents=True)
    (root / "corrupt" / "sub" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _photo(root / "badval" / "kittens" / "k.png")
    (root / "list.txt").write_text("calib/a/0.jpg\n")
    (root / "missing_list.txt").write_text("val/n01443537/x.png n01443537\nval/n01443537/gone.png n01443537\n")
    (root / "corrupt.onnx").write_bytes(b"\x08\x07garbage")
    (root / "corrupt.xml").write_text("<?xml version='1.0'?>\n<net name='x' version='11'><layers><layer")
    (root / "model.pt").write_bytes(b"")
    # weights: a real b0-shaped lukemelas file, and a truncated copy
    from edgeeff.models.builder import build_model
    from tests.test_weights import to_lukemelas
    torch.save(to_lukemelas(build_model("b0").state_dict()), root / "b0.pth")
    (root / "b0_truncated.pth").write_bytes((root / "b0.pth").read_bytes()[:10000])
    torch.save({"foo": torch.zeros(3)}, root / "odd.pth")
    torch.save(build_model("lite0"), root / "whole_model.pth")  # torch.save(model): pickled, not a state dict
    (root / "out" / "lite0-onnx").mkdir(parents=True)
    (root / "outfile").mkdir()
    (root / "outfile" / "lite0-onnx").write_text("a file of the user's, where the output folder would go")
    return root


BASE = ["compile", "--variant", "lite0", "--target", "onnx"]
BAD_INPUTS = {
    "unknown variant, nearest suggested": (["compile", "--variant", "lite9", "--target", "onnx"], "did you mean"),
    "unknown target, nearest suggested": (["compile", "--variant", "lite0", "--target", "onnxx"], "did you mean onnx"),
    "missing calibration folder": (BASE + ["--calib", "{d}/nope"], "--calib {d}/nope: not a folder"),
    "empty calibration folder": (BASE + ["--calib", "{d}/empty"], "no images found"),
    "only corrupt calibration images": (BASE + ["--calib", "{d}/corrupt"], "none of the 1 images could be read"),
    "missing validation folder": (BASE + ["--val", "{d}/nope"], "--val {d}/nope: no such folder"),
    "empty validation folder": (BASE + ["--val", "{d}/empty"], "no class folders"),
    "validation folders that are not synsets": (BASE + ["--val", "{d}/badval"], "kittens"),
    "malformed validation list file": (BASE + ["--val", "{d}/list.txt"], "expected `relative/path label`"),
    "missing synsets file": (BASE + ["--val", "{d}/val", "--synsets", "{d}/nope.txt"], "--synsets {d}/nope.txt: no such file"),
    "weights of another variant": (["compile", "--variant", "b2", "--target", "onnx", "--weights", "{d}/b0.pth"], "use --variant b0"),
    "B0 weights given as Lite0 (same shapes but SE)": (BASE + ["--weights", "{d}/b0.pth"], "--weights {d}/b0.pth does not fit --variant lite0"),
    "truncated weights file": (["compile", "--variant", "b0", "--target", "onnx", "--weights", "{d}/b0_truncated.pth"], "truncated"),
    "pickled whole model without --trust-pickle": (BASE + ["--weights", "{d}/whole_model.pth"],
                                                   "unpickling runs code from the file, so pass --trust-pickle"),
    "weights in an unknown layout": (["compile", "--variant", "b0", "--target", "onnx", "--weights", "{d}/odd.pth"], "--weights-format"),
    "output folder exists": (BASE + ["--out", "{d}/out"], "already exists; pass --force"),
    "--out that cannot be created (/proc)": (BASE + ["--out", "/proc/edgeeff-out"], "--out /proc/edgeeff-out: cannot create"),
    "--out that is a file": (BASE + ["--out", "{d}/list.txt"], "--out {d}/list.txt: is a file, not a folder"),
    "--out under a file": (BASE + ["--out", "{d}/list.txt/sub"], "is under {d}/list.txt, which is a file"),
    "output folder that is a file, even with --force": (BASE + ["--out", "{d}/outfile", "--force"],
                                                        "lite0-onnx is a file, not an output folder"),
    "calibration count of zero": (BASE + ["--calib-count", "0"], "--calib-count 0"),
    "zero threads (would run with the target's)": (BASE + ["--threads", "0"], "--threads 0: must be at least 1"),
    "eval with zero threads": (["eval", "{d}/corrupt.onnx", "--val", "{d}/val", "--threads", "0"], "--threads 0: must be at least 1"),
    "validation list naming a missing image": (BASE + ["--val", "{d}/missing_list.txt"],
                                               "--val {d}/missing_list.txt:2: {d}/val/n01443537/gone.png does not exist"),
    "--max-drop without --val": (BASE + ["--max-drop", "0.5"], "--max-drop needs --val"),
    "unknown calibration recipe": (BASE + ["--calib-method", "kl"], "--calib-method kl: unknown"),
    "eval of a corrupt model": (["eval", "{d}/corrupt.onnx", "--val", "{d}/val"], "corrupt.onnx"),
    "eval of a corrupt OpenVINO IR": (["eval", "{d}/corrupt.xml", "--val", "{d}/val"], "corrupt.xml: OpenVINO cannot read it"),
    "intel target with a recipe NNCF lacks": (["compile", "--variant", "lite0", "--target", "intel", "--calib-method", "mse"], "--calib-method mse"),
    "eval of an unsupported file": (["eval", "{d}/model.pt", "--val", "{d}/val"], "cannot evaluate .pt"),
    "report of a folder without report.json": (["report", "{d}/empty"], "no report.json"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_error_and_writes_nothing(case, data, capsys, monkeypatch):
    args, expected = BAD_INPUTS[case]
    args = [a.format(d=data) for a in args]
    if args[0] == "compile" and "--out" not in args:
        args += ["--out", str(data / "fresh")]
    monkeypatch.chdir(data)
    code = main(args + (["--quiet"] if args[0] in ("compile", "eval") else []))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("edgeeff: error:") and len(err.splitlines()) == 1, err
    assert expected.format(d=data) in err
    assert not (data / "fresh").exists()
    assert list((data / "out").iterdir()) == [data / "out" / "lite0-onnx"]


def test_fewer_calibration_images_than_asked_is_a_warning_with_the_count(data, tmp_path, capsys):
    """--calib-count 5000 on a folder of 3: calibrated on the 3, and the console (even with --quiet)
    and report.json say so."""
    code = main(BASE + ["--calib", str(data / "calib"), "--calib-count", "5000", "--latency-runs", "1",
                        "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    expected = f"--calib-count 5000: --calib {data / 'calib'} gave only 3 images; calibrated on those"
    assert f"edgeeff: warning: {expected}" in err and len(err.strip().splitlines()) == 1
    report = json.loads((tmp_path / "lite0-onnx" / "report.json").read_text())
    assert report["model"]["se"] == "none"  # Lite: never had SE, nothing was removed
    assert report["calibration"]["images"] == 3 and report["warnings"] == [err.strip().split("warning: ", 1)[1]]


def test_missing_backend_names_the_extra(data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if ONNX Runtime were not installed
    code = main(BASE + ["--out", str(data / "fresh"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "pip install 'edgeeff[onnx]'" in err and not (data / "fresh").exists()


def test_missing_openvino_names_the_extra(data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if OpenVINO were not installed
    code = main(["compile", "--variant", "lite0", "--target", "intel", "--out", str(data / "fresh"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "pip install 'edgeeff[openvino]'" in err and not (data / "fresh").exists()


@pytest.mark.slow
def test_odd_image_modes_are_converted_not_rejected(tmp_path):
    for mode, name in (("L", "gray.png"), ("CMYK", "cmyk.jpg"), ("RGBA", "alpha.png"), ("I;16", "deep.png"),
                       ("P", "palette.gif")):
        _photo(tmp_path / "calib" / name, mode)
    assert main(BASE + ["--calib", str(tmp_path / "calib"), "--out", str(tmp_path / "out"), *QUICK]) == 0
    report = json.loads((tmp_path / "out" / "lite0-onnx" / "report.json").read_text())
    assert report["calibration"]["images"] == 5 and report["calibration"]["skipped"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_compile_leaves_no_output(tmp_path, sig):
    out = tmp_path / "out"
    # A shell that starts jobs in the background ignores SIGINT in them, and Python keeps an ignored
    # SIGINT ignored: restore the default in the child, as an interactive terminal would have it.
    proc = subprocess.Popen([sys.executable, "-m", "edgeeff", *BASE, "--out", str(out), *QUICK],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    def partials():
        # compile's --out check creates `out` and removes it again before the real work starts
        # (output_folder.check_out_folder): the folder may vanish between glob's check and its scan.
        try:
            return list(out.glob(".lite0-onnx.partial-*"))
        except FileNotFoundError:
            return []

    deadline = time.time() + 120
    while time.time() < deadline and not partials():
        time.sleep(0.05)
    assert partials(), "compile never started writing"
    time.sleep(0.5)  # mid-export
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    assert not (out / "lite0-onnx").exists()
    assert not list(out.glob(".*partial*"))


def test_interrupt_wrapped_by_a_library_is_still_a_clean_interrupt(monkeypatch, capsys):
    # CI once sent SIGINT while torch.onnx was importing a dataclass: Python re-raised the
    # KeyboardInterrupt as "RuntimeError: Error calling __set_name__ ...", which reached the user
    # as a traceback. Any exception whose chain holds an interrupt must end as one.
    from edgeeff import cli

    def wrapped(_args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise RuntimeError("Error calling __set_name__") from interrupt

    def plain(_args):
        raise RuntimeError("a bug, not an interrupt")

    monkeypatch.setitem(cli.COMMANDS, "targets", wrapped)
    assert cli.main(["targets"]) == 130
    assert capsys.readouterr().err.strip() == "edgeeff: interrupted; no output folder was written"
    monkeypatch.setitem(cli.COMMANDS, "targets", plain)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["targets"])


def test_stale_partial_folder_of_a_killed_run_is_cleaned(tmp_path):
    from edgeeff.output_folder import remove_stale_partials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".lite0-onnx.partial-{dead.pid}"
    stale.mkdir()
    mine = tmp_path / f".lite0-onnx.partial-{os.getpid()}"
    mine.mkdir()
    remove_stale_partials(tmp_path / "lite0-onnx")
    assert not stale.exists() and mine.exists()


class Runs(NamedTuple):
    """Output folders of several compiles and their report.json, in run order."""
    folders: list[Path]
    reports: list[dict]


@pytest.fixture(scope="module")
def twice(data, tmp_path_factory) -> Runs:
    """The same compile twice (tiny validation set), second run served from the caches."""
    folders = []
    for run in range(2):
        out = tmp_path_factory.mktemp(f"run{run}")
        assert main(BASE + ["--calib", str(data / "calib"), "--val", str(data / "val"), "--out", str(out), *QUICK]) == 0
        folders.append(out / "lite0-onnx")
    return Runs(folders, [json.loads((folder / "report.json").read_text()) for folder in folders])


def _without_timings(report):
    report = json.loads(json.dumps(report))
    report.pop("timings_s")
    report.pop("peak_rss_mb")
    report["reference"].pop("cached")
    for a in report["artifacts"]:
        a.pop("latency_ms")
        (a.get("quantization") or {}).pop("calibration_stats_cached", None)
    return report


@pytest.mark.slow
def test_identical_inputs_give_identical_reports(twice):
    assert _without_timings(twice.reports[0]) == _without_timings(twice.reports[1])


@pytest.mark.slow
def test_second_target_for_same_model_and_data_reuses_caches(twice):
    first, second = twice.reports
    assert first["reference"]["cached"] is False and second["reference"]["cached"] is True
    int8 = [a for a in second["artifacts"] if a["precision"] == "int8"][0]
    assert int8["quantization"]["calibration_stats_cached"] is True
    for stage in ("load_model", "export_onnx", "quantize", "evaluate_reference"):
        assert stage in second["timings_s"]


@pytest.mark.slow
def test_max_drop_gates_after_writing_the_report(data, tmp_path, capsys):
    code = main(BASE + ["--calib", str(data / "calib"), "--val", str(data / "val"), "--out", str(tmp_path),
                        "--max-drop", "0", *QUICK])
    report = json.loads((tmp_path / "lite0-onnx" / "report.json").read_text())
    drops = [a["top1_drop"] for a in report["artifacts"]]
    fallback = report["fallback"]  # the onnx target always tries the float fallback under --max-drop
    assert code == (4 if max(drops) > 0 or not fallback["met"] else 0)
    code = main(BASE + ["--calib", str(data / "calib"), "--val", str(data / "val"), "--out", str(tmp_path),
                        "--force", "--max-drop", "100", *QUICK])
    assert code == 0


@pytest.mark.slow
def test_report_command_compares_folders_in_one_page(twice, data, tmp_path, capsys):
    assert main(["report", *map(str, twice.folders), "--html", str(tmp_path / "cmp.html")]) == 0
    page = (tmp_path / "cmp.html").read_text()
    assert page.count("<svg") == 3 and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "2 builds compared" in page


@pytest.mark.slow
def test_html_report_is_self_contained(twice, tmp_path):
    from edgeeff.report.html_page import render

    page = render([twice.reports[0]])
    assert "<svg" in page and "<script" not in page
    assert "https://" not in page and "src=" not in page  # nothing fetched from the network
    assert "FP32 reference" in page and "Preprocessing" in page and "Calibration" in page


@pytest.mark.slow
def test_html_report_renders_in_a_real_browser(twice, tmp_path):
    """Open the page in headless Chromium (network off) and check the charts actually drew."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from render_report import find_chromium, render

    if find_chromium() is None:
        pytest.skip("Chromium not installed (apt-get install chromium): the page is not rendered")
    page = twice.folders[0] / "report.html"
    png = render(page, tmp_path / "shot.png", width=1200, height=1000)
    shot = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert shot.shape[:2] == (1000, 1200)
    # The int8 bars are drawn in the int8 orange (#d9822b): present only if the SVG rendered.
    orange = (np.abs(shot - [0xD9, 0x82, 0x2B]).sum(axis=2) < 30).sum()
    assert orange > 500, orange
