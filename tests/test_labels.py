"""Label files as users write them (names only, names with spaces, `<synset> <name>`), validation
folders named by class, and the labels.txt beside an artifact read by `edgeeff eval` and the Jetson
script without --synsets."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgeeff.data.images import imagenet_labels, labels_beside, load_validation, read_synsets_file
from edgeeff.errors import UserError
from edgeeff.models.family import spec_for_variant

SPEC = spec_for_variant("lite0")
NAMES = ["cabbage butterfly", "sulphur butterfly", "monarch", "red admiral", "painted lady",
         "peacock butterfly", "small tortoiseshell", "comma", "brimstone", "orange tip"]


def _img(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _class_folders(root, names, spell=lambda n: n):
    for i, name in enumerate(names):
        _img(root / spell(name) / f"img{i}.png", seed=i)
    return root


def test_names_only_file_keeps_names_with_spaces_and_matches_folders_spelled_either_way(tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(NAMES) + "\n")
    labels = read_synsets_file(tmp_path / "labels.txt")
    assert labels.names == NAMES  # not a synset `cabbage` named `butterfly`
    val = _class_folders(tmp_path / "val", NAMES[:5])
    _class_folders(val, NAMES[5:], spell=lambda n: n.replace(" ", "_").title())  # Peacock_Butterfly
    loaded = load_validation(val, labels, SPEC, quiet=True)
    by_folder = {p.parent.name: int(c) for p, c in zip(loaded.paths, loaded.labels)}
    assert by_folder["cabbage butterfly"] == 0 and by_folder["Peacock_Butterfly"] == 5
    assert sorted(by_folder.values()) == list(range(10))


def test_synset_name_files_still_read_as_pairs(tmp_path):
    (tmp_path / "syn.txt").write_text("n02277742 cabbage_butterfly\nn02281406 sulphur butterfly\n")
    labels = read_synsets_file(tmp_path / "syn.txt")
    assert labels.synsets == ["n02277742", "n02281406"]
    assert labels.names == ["cabbage butterfly", "sulphur butterfly"]


def test_unknown_folder_message_does_not_contradict_itself(tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(NAMES) + "\n")
    val = _class_folders(tmp_path / "val", ["cabbage butterfly", "moth"])
    with pytest.raises(UserError) as err:
        load_validation(val, read_synsets_file(tmp_path / "labels.txt"), SPEC, quiet=True)
    message = str(err.value)
    assert "'moth'" in message and "cabbage butterfly" not in message
    assert "neither synsets nor class names" in message and "the name alone" in message


def test_labels_beside_an_imagenet_artifact_keep_the_synsets(tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(imagenet_labels().names) + "\n")
    assert labels_beside(tmp_path).synsets[0] == "n01440764"
    (tmp_path / "labels.txt").write_text("\n".join(NAMES) + "\n")
    assert labels_beside(tmp_path).names == NAMES
    assert labels_beside(tmp_path / "nowhere") is None


def test_jetson_script_reads_names_with_spaces_from_the_labels_beside_it(tmp_path):
    from edgeeff.device.jetson_eval_engine import validation_items

    (tmp_path / "labels.txt").write_text("\n".join(NAMES) + "\n")
    val = _class_folders(tmp_path / "val", ["sulphur butterfly", "orange_tip"])
    items = validation_items(val, tmp_path / "labels.txt")
    assert sorted(label for _, label in items) == [1, 9]


@pytest.mark.slow
def test_ten_class_model_with_names_only_labels_compiles_and_evaluates_without_synsets(tmp_path, capsys):
    """Issue 21's bar: Lite0 with a 10-class classifier, a names-only label file with spaces,
    validation folders named by class; `edgeeff eval` reads the labels.txt beside the artifact."""
    from edgeeff.cli import main
    from edgeeff.models.weights import load_model

    from .test_weights import to_lukemelas

    model, _ = load_model("lite0")
    torch.manual_seed(0)
    model.classifier = torch.nn.Linear(model.classifier.in_features, 10)
    torch.save(to_lukemelas(model.state_dict()), tmp_path / "butterflies.pth")
    (tmp_path / "my labels.txt").write_text("\n".join(NAMES) + "\n")
    val = _class_folders(tmp_path / "val", NAMES)
    out = tmp_path / "out"
    assert main(["compile", "--variant", "lite0", "--target", "onnx", "--weights", str(tmp_path / "butterflies.pth"),
                 "--synsets", str(tmp_path / "my labels.txt"), "--val", str(val), "--calib-count", "8",
                 "--latency-runs", "2", "--out", str(out), "--quiet"]) == 0
    folder = out / "lite0-onnx"
    report = json.loads((folder / "report.json").read_text())
    assert report["model"]["num_classes"] == 10 and report["dataset"]["images"] == 10
    assert (folder / "labels.txt").read_text().splitlines() == NAMES
    capsys.readouterr()
    assert main(["eval", str(folder / "model_int8.onnx"), "--val", str(val)]) == 0  # no --synsets
    printed = capsys.readouterr()
    assert "model_int8.onnx" in printed.out and "Traceback" not in printed.err
    import edgeeff

    scores = edgeeff.evaluate(folder / "model_int8.onnx", val=val, quiet=True)
    assert scores["images"] == 10 and "beside the artifact" in scores["label_source"]
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert scores["top1"] == int8["top1"]  # the same labels as the compile's --synsets
