"""Progress bars that stay quiet in CI logs and with --quiet (tqdm writes to stderr)."""

from __future__ import annotations

import sys

from tqdm import tqdm

QUIET = False  # set by the CLI's --quiet


def progress(iterable, desc: str, unit: str = "it", quiet: bool = False, total: int | None = None):
    disable = quiet or QUIET or not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable, leave=False, dynamic_ncols=True)


def warn(message: str) -> None:
    """A one-line warning on stderr, even with --quiet: it is about the result, not the progress."""
    print(f"edgeeff: warning: {message}", file=sys.stderr, flush=True)


def say(message: str) -> None:
    """A one-line stage message on stderr, unless quiet."""
    if not QUIET:
        print(message, file=sys.stderr, flush=True)
