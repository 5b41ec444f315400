"""Content-addressed cache for work that does not depend on the target: FP32 reference logits.

The key hashes everything the result depends on (weights bytes, architecture, preprocessed
image bytes, library version), so a stale entry cannot be hit. Location: $EDGEEFF_CACHE, else
~/.cache/edgeeff; EDGEEFF_CACHE=off disables it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np


def cache_dir() -> Path | None:
    setting = os.environ.get("EDGEEFF_CACHE", "")
    if setting.lower() in ("off", "0", "none"):
        return None
    return Path(setting) if setting else Path.home() / ".cache" / "edgeeff"


def content_key(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str((part.shape, part.dtype)).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def cached_array(kind: str, key: str, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """(array, hit): load `kind/key.npy` or compute and store it (atomically)."""
    root = cache_dir()
    if root is None:
        return compute(), False
    path = root / kind / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path), True
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged entry is recomputed
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}.npy")
    np.save(tmp, value)
    os.replace(tmp, path)
    return value, False
