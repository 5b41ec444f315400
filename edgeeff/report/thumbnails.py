"""Small JPEG thumbnails of validation images, inlined in report.html as data URIs (the page stays
one self-contained file): the images whose top-1 an artifact changed, as the model saw them (the
preprocessing's centre crop), THUMB_PX pixels square, at most THUMBS_SHOWN per artifact. Read from
the image files report.json lists; a file that is gone or unreadable is skipped and counted."""

from __future__ import annotations

import base64
import io
from pathlib import Path

THUMB_PX = 64
THUMBS_SHOWN = 48
JPEG_QUALITY = 70


def thumbnail_uri(path: str | Path, pre: dict) -> str | None:
    """The image's preprocessing crop as a THUMB_PX JPEG data URI; None when it cannot be read."""
    from PIL import Image

    from ..device.device_preprocess import UNREADABLE_ERRORS, crop, load_rgb

    try:
        pixels = crop(load_rgb(path), pre)
    except (*UNREADABLE_ERRORS, FileNotFoundError):
        return None
    small = Image.fromarray(pixels).resize((THUMB_PX, THUMB_PX), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=JPEG_QUALITY)  # no EXIF, no timestamp: same pixels, same bytes
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")
