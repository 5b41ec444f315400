"""FP32 export: the PyTorch model to one self-contained ONNX file with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Per-node debugging metadata the exporter writes that describes this checkout, not the model: the
# Python stack trace (absolute file paths of the machine that exported) and the Python class paths
# of the modules. Kept, the same model exported from another folder or after a code move would give
# a different file; dropped, the artifact depends only on the model. (Module scopes such as
# `stem.bn` are kept: they name the model's own layers.)
HOST_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.class_hierarchy", "namespace")


def export_onnx(model: torch.nn.Module, resolution: int, path: Path) -> Path:
    """torch.export-based ONNX export (the TorchScript exporter is deprecated).

    The dynamo exporter folds TF "same" padding into Conv's own pads, so the graph is only
    Conv/Clip/Sigmoid/Mul/Add/ReduceMean/Gemm: what every quantizer and runtime handles best.
    """
    model = model.eval()
    example = (torch.zeros(1, 3, resolution, resolution),)
    batch = torch.export.Dim("batch", min=1, max=1024)
    # The exporter logs that torchvision's detection ops are not registered: irrelevant here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, example, dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), optimize=True, verbose=False)
    proto = program.model_proto
    proto.producer_name = "edgeeff"
    strip_host_metadata(proto)
    # One file, weights inside: what users copy to a device. (EfficientNet-B7 is 266 MB, under 2 GB.)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def strip_host_metadata(proto: onnx.ModelProto) -> None:
    """Drop HOST_METADATA from every node, in place."""
    for node in proto.graph.node:
        kept = [(p.key, p.value) for p in node.metadata_props if p.key not in HOST_METADATA]
        del node.metadata_props[:]
        for key, value in kept:
            node.metadata_props.add(key=key, value=value)
