import numpy as np
import pytest
from PIL import Image

from edgeeff.preprocess import PreprocessSpec, UnreadableImage, crop_image, load_rgb, spec_for_variant


def test_variant_specs():
    lite = spec_for_variant("lite0")
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5)
    assert lite.resolution == 224 and lite.resize_size == 256 and lite.interpolation == "bicubic"
    b0 = spec_for_variant("b0")
    assert b0.mean == (0.485, 0.456, 0.406) and b0.std == (0.229, 0.224, 0.225)
    assert spec_for_variant("b3").resolution == 300


def test_model_input_normalisation_and_layout():
    spec = spec_for_variant("lite0")
    crops = np.full((2, 224, 224, 3), 255, np.uint8)
    x = spec.to_model_input(crops)
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    assert np.allclose(x, 1.0)  # (1 - 0.5) / 0.5
    assert spec.with_layout("NHWC").to_model_input(crops).shape == (2, 224, 224, 3)
    assert spec.with_layout("NHWC", "uint8").to_model_input(crops).dtype == np.uint8


def test_resize_shorter_side_then_centre_crop(tmp_path):
    img = Image.new("RGB", (512, 300), (10, 20, 30))
    img.paste((200, 0, 0), (0, 0, 100, 300))  # a red band at the far left falls outside the crop
    out = crop_image(img, spec_for_variant("lite0"))
    assert out.shape == (224, 224, 3)
    assert out[:, 0, 0].max() < 50


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "I;16", "P"])
def test_odd_image_modes_become_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode.replace(';', '')}.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    if mode == "I;16":
        Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)).save(path)
    else:
        Image.new(mode, (64, 64)).save(path)
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (64, 64)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(path)
    value = np.asarray(load_rgb(path))[0, 0, 0]
    assert 120 <= value <= 135  # half of full scale, not clipped to 255


def test_truncated_or_bogus_files_are_unreadable(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (100, 100), (1, 2, 3)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    bogus = tmp_path / "bogus.jpg"
    bogus.write_text("not an image")
    for path in (truncated, bogus):
        with pytest.raises(UnreadableImage):
            load_rgb(path)


def test_spec_round_trips_through_dict():
    spec = spec_for_variant("lite2")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
