#!/usr/bin/env bash
# Create .venv and install edgeeff into it (editable) with the given extras. Safe to re-run.
#   bash scripts/setup.sh            # everything the tests use
#   bash scripts/setup.sh onnx       # only the ONNX Runtime target
#   bash scripts/setup.sh tflite     # only the TFLite/LiteRT targets (rpi, android, ios)
#   bash scripts/setup.sh onnx,sweep # the ONNX Runtime target and `edgeeff sweep` (Ray)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-onnx,tflite,openvino,jetson,lite,plot,sweep,phone,dev}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: otherwise a dependency pulls the newest (CUDA, multi-GB) torch from PyPI.
.venv/bin/pip install -q -c constraints.txt torch==2.13.0
.venv/bin/pip install -q -c constraints.txt -e ".[$EXTRAS]"
echo "edgeeff installed in .venv ($(.venv/bin/edgeeff --version))"
