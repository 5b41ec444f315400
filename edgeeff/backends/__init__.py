"""Backends: one module per runtime/format. Each is a thin adapter around shared work.

A backend module provides:
  EXTRA          the pip extra that installs it (named in the error when it is missing)
  available()    raises MissingBackendError when its libraries do not import
  build(job)     writes the target's artifacts into job.workdir and returns [Artifact, ...]
  open_runner(path, threads, spec)   a runner (see evaluate.Runner) for one of its artifacts
  SUFFIXES       artifact file suffixes it can evaluate (for `edgeeff eval`)
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import MissingBackendError, UserError

# backend name -> module (imported lazily: a missing optional runtime must not break the CLI)
BACKEND_MODULES = {
    "onnxruntime": "edgeeff.backends.onnxruntime",
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
    for name, module_name in BACKEND_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if path.suffix.lower() in module.SUFFIXES:
            module.available()
            return module
    raise UserError(f"{path}: edgeeff cannot evaluate {path.suffix or 'extension-less'} files; "
                    f"supported: .onnx")


__all__ = ["backend", "backend_for_file", "MissingBackendError"]
