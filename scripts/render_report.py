#!/usr/bin/env python3
"""Render report.html in a real headless Chromium and save a PNG screenshot.

    python scripts/render_report.py out/lite0-onnx/report.html [--png shot.png]

Needs Chromium (Debian: `apt-get install chromium`). The page is opened from disk with the
network disabled, so a chart that only draws with network access would show up broken here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render(page: Path, png: Path, width: int = 1200, height: int = 1600) -> Path:
    browser = find_chromium()
    if browser is None:
        raise SystemExit("render_report: no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="edgeeff-chromium-") as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={png.resolve()}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return png


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args()
    png = args.png or args.page.with_suffix(".png")
    render(args.page, png, height=args.height)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
