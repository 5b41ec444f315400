"""The preprocessing arithmetic, in one file that also runs on the device without edgeeff.

decode to 8-bit RGB (load_rgb) -> resize the shorter side and centre-crop (centre_crop) ->
normalise to the model's input (model_input). edgeeff/data/preprocess.py uses these functions for
calibration and validation, and edgeeff copies this file into every output folder that ships a
device script (rpi_classify.py, jetson_eval_engine.py, openvino_classify.py), so the device
runs the very code edgeeff measured with instead of a hand copy that could drift.

Deliberately standalone: only numpy and Pillow, no package-relative imports (on a Pi, Jetson or
phone it is imported as a plain `device_preprocess` module from the output folder). The
`crop` and `preprocess` helpers take manifest.json's "preprocess" dict as it is written.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from PIL import Image, ImageFile

INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
# What PIL raises for a file it cannot decode (corrupt, truncated, not an image, too large).
UNREADABLE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_rgb(path) -> Image.Image:
    """Decode any image to 8-bit RGB: grayscale, palette, CMYK, 16-bit and alpha are converted.

    Raises one of UNREADABLE_ERRORS for a file PIL cannot decode."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is unreadable, not half-grey
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


def resize_size(resolution: int, crop_pct: float) -> int:
    """Shorter side after resizing, before the centre crop (timm's rule: floor(res / crop_pct))."""
    return int(math.floor(resolution / crop_pct + 1e-6))


def centre_crop(img: Image.Image, resolution: int, short: int, interpolation: str = "bicubic") -> np.ndarray:
    """Resize the shorter side to `short`, centre-crop resolution x resolution: uint8 (H, W, 3)."""
    w, h = img.size
    if w <= h:
        new_w, new_h = short, max(1, int(short * h / w))
    else:
        new_w, new_h = max(1, int(short * w / h)), short
    img = img.resize((new_w, new_h), INTERPOLATIONS[interpolation])
    res = resolution
    if new_w < res or new_h < res:  # tiny image: pad with black rather than fail (torchvision does too)
        canvas = Image.new("RGB", (max(new_w, res), max(new_h, res)))
        canvas.paste(img, ((canvas.width - new_w) // 2, (canvas.height - new_h) // 2))
        img, new_w, new_h = canvas, canvas.width, canvas.height
    left = int(round((new_w - res) / 2.0))
    top = int(round((new_h - res) / 2.0))
    return np.asarray(img.crop((left, top, left + res, top + res)), dtype=np.uint8)


def normalise(crops: np.ndarray, mean, std) -> np.ndarray:
    """uint8 pixels -> float32 (x / 255 - mean) / std, per RGB channel, same shape (channels last)."""
    mean = np.asarray(mean, np.float32) * 255.0
    scale = 1.0 / (np.asarray(std, np.float32) * 255.0)
    return (crops.astype(np.float32) - mean) * scale


def model_input(crops: np.ndarray, mean, std, layout: str = "NCHW", input_dtype: str = "float32") -> np.ndarray:
    """uint8 crops (N, H, W, 3) -> the model input: normalised float32 (or raw uint8), NCHW or NHWC."""
    x = crops if input_dtype == "uint8" else normalise(crops, mean, std)
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def quantize(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """A normalised float input -> an integer input tensor: q = clip(round(x / scale) + zero_point)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(x / np.float32(scale)) + zero_point, info.min, info.max).astype(dtype)


# ---- a .tflite's own input and output tensors (LiteRTRunner and rpi_classify.py share these)

def takes_raw_pixels(dtype, scale: float) -> bool:
    """A uint8 input without quantization parameters wants the crop's raw 0-255 pixels."""
    return np.dtype(dtype) == np.uint8 and not scale


def to_input_tensor(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """The model input (normalised float, or raw pixels where `takes_raw_pixels`) -> the tensor the
    interpreter takes: cast for a float input, quantized with the tensor's own scale and zero point
    for an integer one (as the device does it: the report's figures are measured the same way)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or takes_raw_pixels(dtype, scale):
        return x.astype(dtype)
    return quantize(x, dtype, scale, zero_point)


def from_output_tensor(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """An output tensor -> float32 logits (dequantized when it is an integer tensor)."""
    if y.dtype.kind in "iu" and scale:
        return (y.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    return y.astype(np.float32)


# ---- the same, driven by manifest.json's "preprocess" dict (what the device scripts read)

def crop(img: Image.Image, pre: dict) -> np.ndarray:
    """One RGB image -> its uint8 crop (H, W, 3), as manifest["preprocess"] says."""
    res = int(pre["resolution"])
    short = int(pre.get("resize_size") or resize_size(res, float(pre["crop_pct"])))
    return centre_crop(img, res, short, pre.get("interpolation", "bicubic"))


def preprocess(path, pre: dict) -> np.ndarray:
    """One image file -> the model input for one image (batch of 1), as manifest["preprocess"] says."""
    return model_input(crop(load_rgb(path), pre)[None], pre["mean"], pre["std"],
                       pre.get("layout", "NCHW"), pre.get("input_dtype", "float32"))
