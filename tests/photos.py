"""Synthetic photo folders for tests that run real compiles without ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_photo_folders(root: Path, val_per_class: int) -> tuple[Path, Path]:
    """A calibration folder of 4 random photos and a validation tree of two real synsets with
    `val_per_class` random photos each (240 x 260 PNGs, seed 0: the same pixels every run)."""
    rng = np.random.default_rng(0)
    calib = root / "calib"
    calib.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(calib / f"c{i}.png")
    val = root / "val"
    for synset in ("n01440764", "n01443537"):
        (val / synset).mkdir(parents=True)
        for i in range(val_per_class):
            Image.fromarray(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(val / synset / f"v{i}.png")
    return calib, val
