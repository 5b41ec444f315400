"""Issue #21's phone-ready files and report: the top score's ties and saturation counted, float
logits from the LiteRT targets, per-class top-1 and thumbnails of changed images on the page, and
TFLite metadata that MediaPipe's ImageClassifier reads (labels, normalisation) and agrees with."""

import re

import numpy as np
import pytest
from PIL import Image

from edgeeff.report.html_page import render
from edgeeff.report.thumbnails import THUMB_PX, THUMBS_SHOWN
from edgeeff.scoring import per_class_top1, top_score_check

from .conftest import compile_model, needs_shared

QUICK = ["--calib-count", "9", "--latency-runs", "3", "--threads", "2", "--quiet"]


def test_top_score_ties_and_saturation_are_counted():
    # int8 output, scale 0.5, zero point 0: the largest value it holds is 127 * 0.5 = 63.5
    output = {"dtype": "int8", "scale": 0.5, "zero_point": 0}
    logits = np.array([[63.5, 1.0, 0.0],    # saturated
                       [2.0, 2.0, 1.0],     # tied
                       [63.5, 63.5, 0.0],   # both
                       [3.0, 2.5, 1.0]],    # neither
                      np.float32)
    check = top_score_check(logits, output)
    assert (check["saturated"], check["tied"], check["saturated_or_tied"]) == (2, 2, 3)
    assert check["saturated_or_tied_pct"] == 75.0 and check["output_max"] == 63.5 and check["images"] == 4
    # a float output never saturates; ties are still ties
    floats = top_score_check(logits, {"dtype": "float32"})
    assert (floats["saturated"], floats["tied"], floats["output_max"]) == (0, 2, None)
    # uint8, zero point 128: the ceiling is (255 - 128) * scale
    assert top_score_check(logits, {"dtype": "uint8", "scale": 0.25, "zero_point": 128})["output_max"] == 31.75


def test_per_class_top1_counts_each_class_for_each_prediction():
    labels = np.array([0, 0, 2, 2, 2])
    rows = per_class_top1(labels, {"reference": np.array([0, 0, 2, 2, 1]), "int8": np.array([0, 1, 2, 1, 1])},
                          ["tench", "goldfish", "shark"])
    assert [(r["index"], r["name"], r["images"]) for r in rows] == [(0, "tench", 2), (2, "shark", 3)]
    assert rows[0]["top1"] == {"reference": 100.0, "int8": 50.0}
    assert rows[1]["top1"] == {"reference": 66.67, "int8": 33.33}


def _report(files: list[str], classes: int = 3) -> dict:
    names = [f"class {i}" for i in range(classes)]
    return {
        "variant": "lite0", "target": "android", "backend": "litert",
        "preprocess": {"resolution": 32, "crop_pct": 0.875, "resize_size": 36, "interpolation": "bicubic",
                       "mean": [0.5] * 3, "std": [0.5] * 3, "layout": "NHWC"},
        "calibration": {"images": 4, "path": "calib", "source": "images", "method": "minmax"},
        "dataset": {"path": "val", "images": len(files), "classes": classes},
        "reference": {"precision": "fp32", "runtime": "torch", "top1": 80.0, "top5": 90.0},
        "model": {"variant": "lite0", "act": "relu6", "se": "none", "parameters": 1, "weights": {"source": "random"}},
        "artifacts": [{"file": "model_int8.tflite", "format": "tflite", "precision": "int8", "top1": 70.0,
                       "top5": 90.0, "top1_drop": 10.0, "top1_agreement": 90.0,
                       "top_score": {"saturated_or_tied_pct": 0.0},
                       "top1_changed": {"count": len(files), "indices": list(range(len(files))), "files": files,
                                        "reference_top1": [names[0]] * len(files),
                                        "top1": [names[1]] * len(files)}}],
        "per_class": {"classes": [{"index": i, "name": names[i], "images": 2,
                                   "top1": {"reference": 100.0, "model_int8.tflite": 50.0 if i else 100.0}}
                                  for i in range(classes)]},
    }


def test_page_shows_per_class_top1_and_thumbnails_of_changed_images(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i in range(THUMBS_SHOWN + 5):
        path = tmp_path / f"v{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    files.insert(3, str(tmp_path / "gone.png"))  # listed, but no longer there
    page = render([_report(files)])
    assert "Top-1 per class" in page and ">class 2<" in page
    assert page.count('<td class="bad">50.0</td>') == 2  # classes 1 and 2 below the reference
    uris = re.findall(r'src="(data:image/jpeg;base64,[^"]+)"', page)
    assert len(uris) == THUMBS_SHOWN - 1  # the first 48 listed, one of them unreadable
    assert "1 not readable here" in page and "class 0 -&gt; class 1" in page
    import base64
    import io

    thumb = Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1])))
    assert thumb.size == (THUMB_PX, THUMB_PX) and thumb.format == "JPEG"
    assert sum(map(len, uris)) < 48 * 4000  # light: a few kB each
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "") and "<script" not in page
    assert render([_report(files)]) == page  # deterministic
    # over 100 classes the report carries no per_class (the pipeline's rule) and the page has no table
    report = _report(files)
    del report["per_class"]
    assert "Top-1 per class" not in render([report])


# ---------------------------------------------------------------- LiteRT files (compiled)

@pytest.fixture(scope="module")
def android_quick(tmp_path_factory):
    """A quick android compile: packaged weights and photos, no --val."""
    pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed")
    pytest.importorskip("litert_torch", reason="the tflite extra is not installed")
    folder, report = compile_model(tmp_path_factory.mktemp("out"), "lite0", "android", *QUICK)
    return folder, report


def _metadata(path):
    """The file's TFLITE_METADATA buffer parsed with MediaPipe's generated schema module (not
    edgeeff's writer), and the files packed after the model (a zip archive)."""
    import importlib.util
    import io
    import zipfile
    from pathlib import Path

    from edgeeff.backends import litert
    from edgeeff.backends.tflite_metadata import METADATA_NAME

    mp = pytest.importorskip("mediapipe", reason="the phone extra (MediaPipe) is not installed")
    # its package import needs a C++ extension the wheel lacks; the generated module is plain Python
    spec = importlib.util.spec_from_file_location(
        "mp_metadata_schema", Path(mp.__file__).parent / "tasks" / "metadata" / "metadata_schema_py_generated.py")
    md_schema = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(md_schema)
    data = path.read_bytes()
    model = litert._schema().Model.GetRootAs(data, 0)
    entries = [model.Metadata(i) for i in range(model.MetadataLength())]
    found = [e for e in entries if e.Name().decode() == METADATA_NAME]
    assert len(found) == 1
    buf = model.Buffers(found[0].Buffer()).DataAsNumpy().tobytes()
    assert md_schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    archive = zipfile.ZipFile(io.BytesIO(data))
    return md_schema.ModelMetadataT.InitFromPackedBuf(buf, 0), {n: archive.read(n) for n in archive.namelist()}


@pytest.mark.slow
def test_android_files_have_float_logits_and_metadata(android_quick):
    pytest.importorskip("mediapipe", reason="the phone extra (MediaPipe) is not installed")
    folder, report = android_quick
    labels = (folder / "labels.txt").read_text()
    for a in report["artifacts"]:
        meta, packed = _metadata(folder / a["file"])
        assert packed == {"labels.txt": labels.encode()}
        assert meta.minParserVersion == b"1.0.0" and len(meta.subgraphMetadata) == 1
        image = meta.subgraphMetadata[0].inputTensorMetadata[0]
        assert image.content.contentPropertiesType == 2 and image.content.contentProperties.colorSpace == 1  # RGB
        norm = image.processUnits[0].options
        # the files take the pixels and normalise inside (targets' pixel_input): mean 0, std 255
        assert list(norm.mean) == [0.0] * 3 and list(norm.std) == [255.0] * 3
        scores = meta.subgraphMetadata[0].outputTensorMetadata[0]
        assert scores.associatedFiles[0].name == b"labels.txt" and scores.associatedFiles[0].type == 2  # axis labels
        assert a["metadata"]["classes"] == 1000
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert int8["input"]["dtype"] == "uint8" and int8["output"]["dtype"] == "float32"
    # the uint8 input is the pixel byte: x = pixel / 255 quantized with scale 1/255, zero point 0
    assert (int8["input"]["scale"], int8["input"]["zero_point"]) == (pytest.approx(1 / 255), 0)
    assert report["preprocess"]["mean"] == [0.0] * 3 and report["preprocess"]["std"] == [1.0] * 3
    assert report["preprocess"]["normalisation_in_model"]["mean"] == [0.5] * 3
    assert report["preprocess"]["normalisation_in_model"]["how"] == int8["normalisation_in_graph"]
    assert int8["graph"]["integer_only"] and int8["graph"]["float_logits"]


@pytest.mark.slow
def test_metadata_is_written_once_and_deterministically(android_quick, tmp_path):
    """Writing the metadata again replaces it (one TFLITE_METADATA entry, the same bytes)."""
    from edgeeff.backends import litert
    from edgeeff.backends.tflite_metadata import METADATA_NAME, add_classifier_metadata

    folder, _ = android_quick
    copy = tmp_path / "again.tflite"
    copy.write_bytes((folder / "model_int8.tflite").read_bytes())
    labels = (folder / "labels.txt").read_text().splitlines()
    add_classifier_metadata(copy, labels, [0.0] * 3, [1.0] * 3, "EfficientNet lite0", _version(folder))
    assert copy.read_bytes() == (folder / "model_int8.tflite").read_bytes()
    schema = litert._schema()
    model = schema.Model.GetRootAs(copy.read_bytes(), 0)
    names = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    assert names.count(METADATA_NAME) == 1


def _version(folder):
    from edgeeff.version import __version__

    return f"edgeeff {__version__}"


def _mediapipe_top1(path, crops):
    """MediaPipe's ImageClassifier on the preprocessing's centre crops (so its own resize is the
    identity): the top category's index and name per image."""
    mp = pytest.importorskip("mediapipe", reason="the phone extra (MediaPipe) is not installed")
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        tops = [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(c)))
                .classifications[0].categories[0] for c in crops]
    return np.array([t.index for t in tops]), [t.category_name for t in tops]


def _runner_top1(folder, name, crops):
    """edgeeff's runner, fed as the folder's manifest says (pixel / 255 for the phone files)."""
    import json

    from edgeeff.backends import litert
    from edgeeff.data.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_dict(json.loads((folder / "manifest.json").read_text())["preprocess"])
    runner = litert.open_runner(folder / name, 2, spec.with_layout("NHWC", "float32"))
    return runner.predict(runner.spec.to_model_input(crops)).argmax(1)


def _pixel_bytes_top1(path, crops):
    """The top-1 of the uint8-input file fed the crops' pixel bytes themselves, in LiteRT."""
    from edgeeff.backends import litert

    it = litert.interpreter(path, 2)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.uint8
    tops = []
    for crop in crops:
        it.set_tensor(inp["index"], crop[None])
        it.invoke()
        tops.append(int(it.get_tensor(out["index"]).argmax()))
    return np.array(tops)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model_int8.tflite", "model_fp32.tflite", "model_fp16.tflite"])
def test_mediapipe_reads_the_android_file_from_its_metadata(android_quick, name):
    """On the packaged photos, MediaPipe's ImageClassifier, given only the file, names the classes
    from the labels packed in it and computes what edgeeff's runner does: a float input normalised
    with the metadata's mean/std (0 and 255: the file normalises inside its graph), the uint8 input
    fed the pixel bytes, which is exactly what the runner's quantized pixel / 255 gives (scale 1/255)."""
    from edgeeff.data.images import load_calibration
    from edgeeff.models.family import spec_for_variant

    folder, _ = android_quick
    crops = load_calibration(None, 9, spec_for_variant("lite0"), quiet=True).crops
    index, names = _mediapipe_top1(folder / name, crops)
    labels = (folder / "labels.txt").read_text().splitlines()
    assert names == [labels[i] for i in index]
    assert list(index) == list(_runner_top1(folder, name, crops))
    if name == "model_int8.tflite":
        assert list(index) == list(_pixel_bytes_top1(folder / name, crops))


@pytest.mark.slow
def test_mediapipe_runs_a_per_channel_model_android_file(tmp_path):
    """A B model (ImageNet's per-channel mean/std, which MediaPipe refuses in metadata) compiled for
    android: every file takes the pixels and normalises inside, MediaPipe runs it and agrees with
    edgeeff's runner image for image."""
    pytest.importorskip("mediapipe", reason="the phone extra (MediaPipe) is not installed")
    pytest.importorskip("litert_torch", reason="the tflite extra is not installed")
    from edgeeff.data.images import load_calibration
    from edgeeff.models.family import spec_for_variant

    folder, report = compile_model(tmp_path, "b0", "android", "--random-weights", "--optimize", "off",
                                   "--calib-count", "4", "--latency-runs", "1", "--quiet")
    assert report["preprocess"]["normalisation_in_model"]["std"] == list(spec_for_variant("b0").std)
    crops = load_calibration(None, 9, spec_for_variant("b0"), quiet=True).crops
    for a in report["artifacts"]:
        assert "note" not in a["metadata"]  # one mean/std: nothing MediaPipe refuses
        index, _ = _mediapipe_top1(folder / a["file"], crops)
        assert list(index) == list(_runner_top1(folder, a["file"], crops)), a["file"]


@needs_shared
@pytest.mark.slow
def test_mediapipe_agrees_with_edgeeffs_runner_on_validation_images(android_quick, sample):
    """Every 5th validation image (130): MediaPipe feeds the uint8 file the pixel bytes, which is
    what edgeeff's runner feeds it too since the files normalise inside their graph: every file's
    top-1 agrees on every image (before, the INT8 file took the normalised crop quantized, one
    step apart on some pixels: 99.08% on all 650)."""
    from edgeeff.data.images import load_validation, resolve_labels
    from edgeeff.models.family import spec_for_variant

    folder, _ = android_quick
    crops = load_validation(sample / "val", resolve_labels(None), spec_for_variant("lite0"), quiet=True).crops[::5]
    for name in ("model_fp32.tflite", "model_int8.tflite"):
        index, _ = _mediapipe_top1(folder / name, crops)
        agreement = 100 * float((index == _runner_top1(folder, name, crops)).mean())
        assert agreement == 100.0, (name, agreement)
