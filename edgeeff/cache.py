"""Content-addressed cache for work that does not depend on the target: FP32 reference logits.

The key hashes everything the result depends on (weights bytes, architecture, preprocessed
image bytes, library version), so a stale entry cannot be hit. Location: $EDGEEFF_CACHE, else
~/.cache/edgeeff; EDGEEFF_CACHE=off disables it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
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


# What reading a damaged entry raises (a truncated .npy: ValueError or EOFError; a truncated .npz:
# BadZipFile): the entry is removed and recomputed, never used.
DAMAGED = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def load_entry(path: Path, read: Callable[[Path], object]):
    """`read(path)`, or None when there is no usable entry (a damaged one is removed)."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except DAMAGED:
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def store_entry(path: Path, write: Callable[[Path], None]) -> bool:
    """`write` a temporary file of this process beside `path`, then rename it into place, so a
    reader sees a whole entry or none, and two processes never write one file. A full or read-only
    cache is a warning, not a failure: the work was done and the compile goes on without the entry."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
        return True
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        from .progress import warn

        warn(f"cache {path.parent}: cannot store an entry ({err.strerror or err}); continuing without it "
             f"(EDGEEFF_CACHE=off skips the cache)")
        return False


def cached_array(kind: str, key: str, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """(array, hit): load `kind/key.npy` or compute and store it (atomically)."""
    root = cache_dir()
    if root is None:
        return compute(), False
    path = root / kind / f"{key}.npy"
    value = load_entry(path, np.load)
    if value is not None:
        return value, True
    value = compute()
    store_entry(path, lambda tmp: np.save(tmp, value))
    return value, False
