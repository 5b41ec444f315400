"""Backends: one module per runtime/format. Each is a thin adapter around shared work.

A backend module provides:
  EXTRA          the pip extra that installs it (named in the error when it is missing)
  available()    raises MissingBackendError when its libraries do not import
  build(job)     writes the target's artifacts into job.workdir and returns [Artifact, ...]
  open_runner(path, threads, spec)   a runner (see evaluate.Runner) for one of its artifacts
  SUFFIXES       artifact file suffixes it can evaluate (for `edgeeff eval`)
  inspect_input(path)   layout, resolution and output width of a foreign file (`edgeeff eval`)
  check_job(target, recipe)   optional: raise UserError before any heavy work if build() cannot run
  NEEDS_ONNX     optional, default True: build() reads job.fp32_onnx (the pipeline's ONNX export)
  RECIPE_METHODS calibration methods (calib/*.toml `method`) its quantizer implements
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from ..errors import MissingBackendError, UserError

# backend name -> module (imported lazily: a missing optional runtime must not break the CLI)
BACKEND_MODULES = {
    "onnxruntime": "edgeeff.backends.onnxruntime",
    "litert": "edgeeff.backends.litert",
    "openvino": "edgeeff.backends.openvino",
    "tensorrt": "edgeeff.backends.tensorrt",
}


def backend(name: str):
    if name not in BACKEND_MODULES:
        raise UserError(f"backend {name!r} is not available in this edgeeff; known: {', '.join(BACKEND_MODULES)}")
    module = importlib.import_module(BACKEND_MODULES[name])
    module.available()
    return module


def backend_for_file(path: Path):
    """The backend that can run an artifact, chosen by its suffix."""
    suffixes = []
    for name, module_name in BACKEND_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        suffixes += module.SUFFIXES
        if path.suffix.lower() in module.SUFFIXES:
            module.available()
            return module
    raise UserError(f"{path}: edgeeff cannot evaluate {path.suffix or 'extension-less'} files; "
                    f"supported: {', '.join(suffixes)}")


DEVICE_MODULE = "device_preprocess.py"


def ship_device_scripts(workdir: Path, *names: str) -> None:
    """Copy device scripts (edgeeff/device/, package data in a wheel) into the output folder, with
    device_preprocess.py beside them. The scripts run where edgeeff is not installed and import
    their preprocessing from that file: the device then runs the very arithmetic edgeeff
    calibrated and measured with, not a hand copy that could drift."""
    from ..device import device_preprocess

    device_dir = Path(device_preprocess.__file__).parent
    for name in names:
        shutil.copyfile(device_dir / name, workdir / name)
        (workdir / name).chmod(0o755)
    shutil.copyfile(device_dir / DEVICE_MODULE, workdir / DEVICE_MODULE)


__all__ = ["backend", "backend_for_file", "ship_device_scripts", "MissingBackendError"]
