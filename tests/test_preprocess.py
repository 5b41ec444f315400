import numpy as np
import pytest
from PIL import Image

from edgeeff.data.preprocess import PreprocessSpec, UnreadableImage, crop_image, load_rgb
from edgeeff.models.family import spec_for_variant


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


# ---------------------------------------------------------------------------------------------
# edgeeff/device/device_preprocess.py: the file the device scripts import from the output folder


def _odd_images(folder):
    """Images in the modes load_rgb converts, with content (so resampling differences show)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (97, 131, 3), np.uint8)
    alpha = rng.integers(0, 256, (97, 131), np.uint8)
    images = {
        "rgb.jpg": Image.fromarray(rgb),
        "deep16.png": Image.fromarray(rng.integers(0, 65536, (80, 60), np.uint16)),
        "shallow16.png": Image.fromarray(rng.integers(0, 256, (60, 80), np.uint16)),  # peak <= 255: not rescaled
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha])),
        "la.png": Image.fromarray(np.dstack([rgb[..., 0], alpha])),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "cmyk.tif": Image.fromarray(rgb).convert("CMYK"),
        "gray.png": Image.fromarray(rgb[..., 1]),
        "tiny.png": Image.fromarray(rgb[:3, :5]),  # smaller than the crop: padded
    }
    paths = []
    for name, img in images.items():
        img.save(folder / name)
        paths.append(folder / name)
    transparent = Image.fromarray(rgb).convert("P")
    transparent.save(folder / "palette_transparent.png", transparency=3)
    paths.append(folder / "palette_transparent.png")
    return paths


def _specs():
    lite0, b0 = spec_for_variant("lite0"), spec_for_variant("b0")
    bilinear = PreprocessSpec(resolution=96, crop_pct=0.9, interpolation="bilinear", mean=(0.4, 0.5, 0.6),
                              std=(0.2, 0.3, 0.25), layout="NHWC")
    return [lite0, b0.with_layout("NHWC", "uint8"), bilinear]


def test_device_module_imports_only_numpy_and_pillow():
    import ast

    import edgeeff.device.device_preprocess as device

    tree = ast.parse(open(device.__file__).read())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a package-relative import cannot run from the output folder"
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
    assert roots <= {"__future__", "math", "warnings", "numpy", "PIL"}, roots


def test_shipped_device_module_gives_bit_identical_inputs(tmp_path):
    """The copy edgeeff puts in an output folder, imported in an isolated interpreter that cannot
    import edgeeff, from manifest-style dicts: the same crops and model inputs as edgeeff's
    own preprocessing, bit for bit, on images of every mode load_rgb handles."""
    import json
    import subprocess
    import sys

    from edgeeff.backends import ship_device_scripts

    device_dir, images, elsewhere = tmp_path / "out", tmp_path / "images", tmp_path / "cwd"
    for d in (device_dir, images, elsewhere):
        d.mkdir()
    ship_device_scripts(device_dir)  # no scripts: just the module, as it lands beside them
    assert [p.name for p in device_dir.iterdir()] == ["device_preprocess.py"]
    paths = _odd_images(images)
    specs = _specs()
    dicts = [s.to_dict() for s in specs]
    del dicts[2]["resize_size"]  # an older manifest: derived from crop_pct, as edgeeff does
    (tmp_path / "specs.json").write_text(json.dumps(dicts))
    code = ("import json, sys; import numpy as np; sys.modules['edgeeff'] = None; sys.path.insert(0, sys.argv[1])\n"
            "import device_preprocess as d\n"
            "assert d.__file__.startswith(sys.argv[1]), d.__file__\n"
            "specs = json.loads(open(sys.argv[2]).read())\n"
            "np.savez(sys.argv[3], **{f'{i}_{j}': d.preprocess(p, pre) for i, pre in enumerate(specs)\n"
            "                         for j, p in enumerate(sys.argv[4:])})\n")
    out = tmp_path / "inputs.npz"
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(device_dir), str(tmp_path / "specs.json"), str(out),
                           *map(str, paths)], capture_output=True, text=True, cwd=elsewhere, timeout=120)
    assert proc.returncode == 0, proc.stderr
    theirs = np.load(out)
    for i, spec in enumerate(specs):
        for j, path in enumerate(paths):
            ours = spec.to_model_input(crop_image(load_rgb(path), spec)[None])
            got = theirs[f"{i}_{j}"]
            assert got.dtype == ours.dtype and got.shape == ours.shape, (spec, path.name)
            assert np.array_equal(got, ours), (spec, path.name)


def shipped_device_scripts() -> set[str]:
    """Every device script some target copies into its output folder."""
    from edgeeff.backends import tensorrt
    from edgeeff.profiles import all_targets

    shipped = {tensorrt.BUILD_SCRIPT, tensorrt.EVAL_SCRIPT}
    for target in all_targets().values():
        shipped.update(target.raw.get("device_scripts", []))
    assert {"rpi_classify.py", "openvino_classify.py"} <= shipped
    return shipped


@pytest.mark.slow
def test_wheel_ships_the_device_scripts_and_compile_copies_them_from_it(tmp_path):
    """`pip wheel .` holds edgeeff/device/ (every script a target ships, and device_preprocess.py);
    installed elsewhere, ship_device_scripts copies them from that installed package, not from
    this checkout."""
    import subprocess
    import sys
    import zipfile

    from .conftest import REPO

    wheels, site = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("edgeeff-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    scripts = shipped_device_scripts() | {"device_preprocess.py"}
    assert {f"edgeeff/device/{name}" for name in scripts} <= names
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    out = tmp_path / "folder"
    out.mkdir()
    code = ("import sys; from pathlib import Path; import edgeeff.backends as b\n"
            "assert Path(b.__file__).is_relative_to(sys.argv[1]), b.__file__\n"
            "b.ship_device_scripts(Path(sys.argv[2]), *sys.argv[3:])\n")
    # the checkout must not be importable: the copy has to come from the installed wheel
    run = subprocess.run([sys.executable, "-c", code, str(site), str(out), *sorted(shipped_device_scripts())],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    for name in scripts:
        assert (out / name).read_bytes() == (site / "edgeeff" / "device" / name).read_bytes(), name


def test_v2_specs_follow_the_weights_source():
    """timm's tf_efficientnetv2_*.in1k default_cfgs and torchvision's EfficientNet_V2_*_Weights transforms."""
    half, imagenet = (0.5, 0.5, 0.5), (0.485, 0.456, 0.406)
    s = spec_for_variant("v2-s")  # timm's (the TF ports) unless the file is torchvision's
    assert (s.resolution, s.crop_pct, s.interpolation, s.mean) == (384, 1.0, "bicubic", half)
    assert s.resize_size == 384
    for name in ("v2-m", "v2-l"):
        assert (spec_for_variant(name).resolution, spec_for_variant(name).mean) == (480, half)
    b = [spec_for_variant(f"v2-b{i}") for i in range(4)]
    assert [(x.resolution, x.crop_pct) for x in b] == [(224, 0.875), (240, 0.882), (260, 0.890), (300, 0.904)]
    assert {x.mean for x in b} == {imagenet}
    tv = {n: spec_for_variant(n, "torchvision") for n in ("v2-s", "v2-m", "v2-l")}
    assert (tv["v2-s"].interpolation, tv["v2-s"].mean, tv["v2-s"].crop_pct) == ("bilinear", imagenet, 1.0)
    assert (tv["v2-m"].resolution, tv["v2-m"].interpolation, tv["v2-m"].mean) == (480, "bilinear", imagenet)
    assert (tv["v2-l"].interpolation, tv["v2-l"].mean, tv["v2-l"].std) == ("bicubic", half, half)
    assert spec_for_variant("tf_efficientnetv2_b0", "torchvision") == b[0]  # no torchvision V2-B weights
    assert spec_for_variant("b0", "torchvision") == spec_for_variant("b0")  # V1 unchanged
