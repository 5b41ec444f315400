from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeeff.data.images import (
    default_calibration_paths,
    imagenet_labels,
    load_calibration,
    load_validation,
    read_synsets_file,
    spread_choice,
)
from edgeeff.errors import UserError
from edgeeff.models.family import spec_for_variant

from .conftest import needs_shared

SPEC = spec_for_variant("lite0")


def _img(path: Path, color=(120, 30, 60)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (80, 60), color).save(path)


def test_imagenet_labels_are_the_sorted_synsets():
    labels = imagenet_labels()
    assert len(labels.synsets) == 1000
    assert labels.synsets == sorted(labels.synsets)
    assert labels.synsets[0] == "n01440764" and labels.names[0] == "tench"


def test_folders_map_through_synsets_not_folder_order(tmp_path):
    # Two classes far apart in ImageNet: a plain ImageFolder would call them 0 and 1.
    _img(tmp_path / "val" / "n01443537" / "a.jpg")   # goldfish, class 1
    _img(tmp_path / "val" / "n15075141" / "b.jpg")   # toilet tissue, class 999
    val = load_validation(tmp_path / "val", imagenet_labels(), SPEC)
    assert sorted(val.labels.tolist()) == [1, 999]


def test_list_file_and_custom_synsets(tmp_path):
    _img(tmp_path / "imgs" / "x.png")
    _img(tmp_path / "imgs" / "y.png")
    (tmp_path / "syn.txt").write_text("n0001 cat\nn0002 dog\n")
    (tmp_path / "list.txt").write_text("imgs/x.png 1\nimgs/y.png n0001\n")
    labels = read_synsets_file(tmp_path / "syn.txt")
    val = load_validation(tmp_path / "list.txt", labels, SPEC)
    assert val.labels.tolist() == [1, 0]


def test_unknown_synset_is_a_clear_error(tmp_path):
    _img(tmp_path / "val" / "cats" / "a.jpg")
    with pytest.raises(UserError, match="cats.*--synsets"):
        load_validation(tmp_path / "val", imagenet_labels(), SPEC)


def test_empty_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        load_calibration(tmp_path / "empty", 10, SPEC)
    with pytest.raises(UserError, match="no class folders"):
        load_validation(tmp_path / "empty", imagenet_labels(), SPEC)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    _img(tmp_path / "c" / "deep" / "ok.jpg")
    (tmp_path / "c" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    calib = load_calibration(tmp_path / "c", 10, SPEC)
    assert len(calib) == 1 and len(calib.skipped) == 1 and "broken.jpg" in calib.skipped[0]


def test_calibration_choice_is_deterministic_and_spread():
    items = list(range(1000))
    chosen = spread_choice(items, 300)
    assert chosen == spread_choice(items, 300)
    assert chosen[0] == 0 and chosen[-1] == 999 and len(set(chosen)) == 300


def test_default_calibration_photos_are_real_colour_images():
    paths = default_calibration_paths()
    assert len(paths) >= 8
    calib = load_calibration(None, 300, SPEC)
    assert len(calib) == len(paths) and calib.crops.std() > 20  # real photos, not flat fills


@needs_shared
def test_shared_validation_set_maps_456_classes(sample):
    val = load_validation(sample / "val", imagenet_labels(), SPEC)
    assert len(val) == 650 and len(np.unique(val.labels)) == 456


def test_images_read_side_by_side_keep_their_order_and_pixels(tmp_path):
    """crop_all decodes several images at once: the crops come back in the paths' order, each the
    one a single read gives, and an unreadable file in between is skipped in its place."""
    from edgeeff.data.images import crop_all
    from edgeeff.data.preprocess import crop_image, load_rgb

    rng = np.random.default_rng(3)
    paths = []
    for i in range(12):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 3 * i, 50 + 5 * i, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    broken = tmp_path / "05b.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    paths.insert(6, broken)
    kept, crops, skipped = crop_all(paths, SPEC, "test", quiet=True)
    assert kept == [p for p in paths if p != broken] and len(skipped) == 1 and "05b.jpg" in skipped[0]
    for path, crop in zip(kept, crops):
        assert np.array_equal(crop, crop_image(load_rgb(path), SPEC))
