"""The one preprocessing spec a model carries to calibration, validation and the device.

Images are decoded, resized and centre-cropped once into uint8 RGB crops (HWC); each runtime then
turns crops into its own input with `to_model_input` (float NCHW/NHWC normalised, or raw uint8).
Keeping the crop step shared is what makes a calibration/validation/device mismatch impossible.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from .family import VARIANTS

INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
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
        return int(math.floor(self.resolution / self.crop_pct + 1e-6))

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

    def to_model_input(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops (N, H, W, 3) -> this spec's model input."""
        if self.input_dtype == "uint8":
            x = crops
        else:
            mean = np.asarray(self.mean, np.float32) * 255.0
            scale = 1.0 / (np.asarray(self.std, np.float32) * 255.0)
            x = (crops.astype(np.float32) - mean) * scale
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)


def spec_for_variant(variant: str) -> PreprocessSpec:
    v = VARIANTS[variant]
    return PreprocessSpec(resolution=v.resolution, crop_pct=round(v.crop_pct, 4), interpolation="bicubic",
                          mean=v.mean, std=v.std)


class UnreadableImage(Exception):
    """An image file PIL cannot decode (corrupt, truncated, not an image)."""


def load_rgb(path: Path) -> Image.Image:
    """Decode any image to 8-bit RGB: grayscale, palette, CMYK, 16-bit and alpha are converted."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is unreadable, not half-grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC chatter is not the user's problem
            with Image.open(path) as img:
                img.load()
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                    # 16-bit: scale to 8 bits instead of letting convert() clip at 255.
                    arr = np.asarray(img, dtype=np.float64)
                    peak = 65535.0 if arr.max() > 255 else 255.0
                    img = Image.fromarray((arr * (255.0 / peak)).round().clip(0, 255).astype(np.uint8))
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    # Transparent pixels over white, as a viewer shows them, rather than their hidden RGB.
                    rgba = img.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    return Image.alpha_composite(background, rgba).convert("RGB")
                return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"{path}: {err}") from None


def crop_image(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize the shorter side to spec.resize_size, centre-crop spec.resolution: uint8 (H, W, 3)."""
    w, h = img.size
    short = spec.resize_size
    if w <= h:
        new_w, new_h = short, max(1, int(short * h / w))
    else:
        new_w, new_h = max(1, int(short * w / h)), short
    img = img.resize((new_w, new_h), INTERPOLATIONS[spec.interpolation])
    res = spec.resolution
    if new_w < res or new_h < res:  # tiny image: pad with black rather than fail (torchvision does too)
        canvas = Image.new("RGB", (max(new_w, res), max(new_h, res)))
        canvas.paste(img, ((canvas.width - new_w) // 2, (canvas.height - new_h) // 2))
        img, new_w, new_h = canvas, canvas.width, canvas.height
    left = int(round((new_w - res) / 2.0))
    top = int(round((new_h - res) / 2.0))
    return np.asarray(img.crop((left, top, left + res, top + res)), dtype=np.uint8)
