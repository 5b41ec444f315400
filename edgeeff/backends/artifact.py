"""What a backend hands back: one entry per file it wrote, with what the report needs to run it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.preprocess import PreprocessSpec


@dataclass
class Artifact:
    file: str  # relative to the output folder
    format: str  # onnx | tflite | openvino | tensorrt
    precision: str  # fp32 | fp16 | int8
    spec: PreprocessSpec  # the input this file expects (layout, dtype)
    quantization: dict | None = None  # settings used, for the report
    verified: bool = True  # False: could not be run here (e.g. a TensorRT engine without TensorRT)
    reason: str | None = None  # why not verified
    runnable_here: bool = True  # evaluate it in its own runtime on this machine
    verified_by: str | None = None  # how it was checked, when not by its own runtime (e.g. ORT proxy)
    extra: dict = field(default_factory=dict)  # backend-specific report fields
    # In memory only, never reported: what the backend's float_variants() re-uses (LiteRT: the
    # calibration the INT8 file was quantized from)
    state: object = field(default=None, repr=False, compare=False)

    def size_bytes(self, folder: Path) -> int | None:
        """What a device stores for it: the file, plus its weights file when it has one (an
        OpenVINO IR is the .xml with its .bin). None when the file is not here (a device-built
        engine). Read from disk when asked, so a file rewritten after build() (the --max-drop
        fallback) is measured as shipped."""
        path = folder / self.file
        if not path.is_file():
            return None
        weights = self.extra.get("weights_file")
        return path.stat().st_size + ((folder / weights).stat().st_size if weights else 0)

