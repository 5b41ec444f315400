"""The one preprocessing spec a model carries to calibration, validation and the device.

Images are decoded, resized and centre-cropped once into uint8 RGB crops (HWC); each runtime then
turns crops into its own input with `to_model_input` (float NCHW/NHWC normalised, or raw uint8).
Keeping the crop step shared is what makes a calibration/validation/device mismatch impossible.
The arithmetic itself lives in device_preprocess.py (numpy and Pillow only), which edgeeff also
copies beside the device scripts in the output folder: one implementation, here and on the device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..device import device_preprocess as device
from ..device.device_preprocess import INTERPOLATIONS  # noqa: F401  (re-exported: part of this module's API)

LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class PreprocessSpec:
    resolution: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"
    input_dtype: str = "float32"  # "float32": normalised floats; "uint8": raw 0-255 pixels

    @property
    def resize_size(self) -> int:
        """Shorter side after resizing, before the centre crop (timm's rule: floor(res / crop_pct))."""
        return device.resize_size(self.resolution, self.crop_pct)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["resize_size"] = self.resize_size
        d["channel_order"] = "RGB"
        d["pixel_range"] = "[0, 1] before mean/std" if self.input_dtype == "float32" else "[0, 255] uint8"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(resolution=int(d["resolution"]), crop_pct=float(d["crop_pct"]),
                   interpolation=d.get("interpolation", "bicubic"), mean=tuple(d["mean"]),
                   std=tuple(d["std"]), layout=d.get("layout", "NCHW"),
                   input_dtype=d.get("input_dtype", "float32"))

    def with_layout(self, layout: str, input_dtype: str | None = None) -> "PreprocessSpec":
        return replace(self, layout=layout, input_dtype=input_dtype or self.input_dtype)

    def pixels_only(self) -> "PreprocessSpec":
        """The same crop with mean 0, std 1: the input of a file that normalises inside its graph
        (x = pixel / 255 in [0, 1]; litert.build's phone files)."""
        return replace(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    def to_model_input(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops (N, H, W, 3) -> this spec's model input."""
        return device.model_input(crops, self.mean, self.std, self.layout, self.input_dtype)


class UnreadableImage(Exception):
    """An image file PIL cannot decode (corrupt, truncated, not an image)."""


def load_rgb(path: Path) -> Image.Image:
    """Decode any image to 8-bit RGB: grayscale, palette, CMYK, 16-bit and alpha are converted."""
    try:
        return device.load_rgb(path)
    except device.UNREADABLE_ERRORS as err:
        raise UnreadableImage(f"{path}: {err}") from None


def crop_image(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize the shorter side to spec.resize_size, centre-crop spec.resolution: uint8 (H, W, 3)."""
    return device.centre_crop(img, spec.resolution, spec.resize_size, spec.interpolation)
