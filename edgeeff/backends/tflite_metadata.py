"""TFLite metadata for an image classifier: what MediaPipe's and the TFLite Task Library's
ImageClassifier read to run a .tflite without code (the input's normalisation, colour space, and
the labels of the output).

The metadata is the `ModelMetadata` flatbuffer of TFLite Support's published schema
(`metadata_schema.fbs`, file identifier "M001", shipped in MediaPipe's wheel as
mediapipe/tasks/metadata/metadata_schema.fbs), written here with the `flatbuffers` package field
by field (the tables and slot numbers below are the schema's), stored in a model buffer named
TFLITE_METADATA, and labels.txt packed after the model as a zip archive: what MediaPipe's own
metadata writer (mediapipe.tasks.python.metadata) produces for an image classifier. Only the
features of metadata parser version 1.0.0 are used. Deterministic: the same inputs give the same
bytes (the zip entry has a fixed date and no compression).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"
# Enum and union values of metadata_schema.fbs.
CONTENT_FEATURE, CONTENT_IMAGE = 1, 2  # union ContentProperties
PROCESS_NORMALIZATION = 1  # union ProcessUnitOptions
COLOR_RGB = 1  # enum ColorSpaceType
TENSOR_AXIS_LABELS = 2  # enum AssociatedFileType


def _floats(builder, values) -> int:
    builder.StartVector(4, len(values), 4)
    for v in reversed(values):
        builder.PrependFloat32(float(v))
    return builder.EndVector()


def _offsets(builder, offsets) -> int:
    builder.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return builder.EndVector()


def _table(builder, slots: int, fields) -> int:
    """A table of `slots` fields; `fields`: (slot, kind, value) with kind "offset", "uint8" or "int8"."""
    builder.StartObject(slots)
    for slot, kind, value in fields:
        if kind == "offset":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "uint8":
            builder.PrependUint8Slot(slot, value, 0)
        else:
            builder.PrependInt8Slot(slot, value, 0)
    return builder.EndObject()


def classifier_metadata(name: str, description: str, mean: list[float], std: list[float],
                        input_min: list[float], input_max: list[float], version: str) -> bytes:
    """The ModelMetadata flatbuffer of a one-input image classifier whose output's labels are
    labels.txt. `mean`/`std` in pixel units (0-255): the model's input is (pixel - mean) / std;
    `input_min`/`input_max`: the input tensor's value range (its Stats)."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    # input: TensorMetadata {name, description, content: ImageProperties RGB, process_units:
    # [NormalizationOptions], stats}
    image_props = _table(b, 2, [(0, "int8", COLOR_RGB)])  # ImageProperties {color_space, default_size}
    in_content = _table(b, 3, [(0, "uint8", CONTENT_IMAGE), (1, "offset", image_props)])  # Content
    norm = _table(b, 2, [(0, "offset", _floats(b, mean)), (1, "offset", _floats(b, std))])  # NormalizationOptions
    unit = _table(b, 2, [(0, "uint8", PROCESS_NORMALIZATION), (1, "offset", norm)])  # ProcessUnit
    in_stats = _table(b, 2, [(0, "offset", _floats(b, input_max)), (1, "offset", _floats(b, input_min))])  # Stats
    in_name, in_desc = b.CreateString("image"), b.CreateString(
        "RGB image, resized and centre-cropped as the manifest's preprocess says")
    units = _offsets(b, [unit])
    input_md = _table(b, 7, [(0, "offset", in_name), (1, "offset", in_desc), (3, "offset", in_content),
                             (4, "offset", units), (5, "offset", in_stats)])
    # output: TensorMetadata {name, description, content: FeatureProperties, associated_files: [labels]}
    features = _table(b, 0, [])  # FeatureProperties {}
    out_content = _table(b, 3, [(0, "uint8", CONTENT_FEATURE), (1, "offset", features)])
    label_name, label_desc = b.CreateString(LABELS_FILE), b.CreateString("class names, line N = class N")
    label_file = _table(b, 5, [(0, "offset", label_name), (1, "offset", label_desc),
                               (2, "int8", TENSOR_AXIS_LABELS)])  # AssociatedFile
    out_name, out_desc = b.CreateString("logits"), b.CreateString("one score per class (logits, higher is likelier)")
    out_files = _offsets(b, [label_file])
    output_md = _table(b, 7, [(0, "offset", out_name), (1, "offset", out_desc), (3, "offset", out_content),
                              (6, "offset", out_files)])
    inputs, outputs = _offsets(b, [input_md]), _offsets(b, [output_md])
    subgraph = _table(b, 10, [(2, "offset", inputs), (3, "offset", outputs)])  # SubGraphMetadata
    subgraphs = _offsets(b, [subgraph])
    model_name, model_desc = b.CreateString(name), b.CreateString(description)
    model_version, author = b.CreateString(version), b.CreateString("edgeeff")
    parser = b.CreateString(MIN_PARSER_VERSION)
    root = _table(b, 8, [(0, "offset", model_name), (1, "offset", model_desc), (2, "offset", model_version),
                         (3, "offset", subgraphs), (4, "offset", author), (7, "offset", parser)])
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def add_classifier_metadata(path: Path, labels: list[str], mean_01, std_01, name: str, version: str) -> dict:
    """Write the classifier metadata into the .tflite at `path` (in place) and pack the labels
    after it. `mean_01`/`std_01`: the preprocessing's, on [0, 1] pixels. Returns the report's
    description of what was written."""
    from .tflite_flatbuffer import load_inlined, save
    from .tflite_flatbuffer import schema as tflite_schema

    schema = tflite_schema()
    model = load_inlined(path)  # re-packed below: every buffer inside the flatbuffer
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"{path}: classifier metadata needs one input and one output")
    in_type = graph.tensors[graph.inputs[0]].type
    mean = [round(255.0 * m, 6) for m in mean_01]
    std = [round(255.0 * s, 6) for s in std_01]
    if in_type == schema.TensorType.FLOAT32:
        low, high = [(0.0 - m) / s for m, s in zip(mean, std)], [(255.0 - m) / s for m, s in zip(mean, std)]
    else:  # an integer input takes the pixel bytes' range (MediaPipe's writer: [0], [255])
        low, high = [0.0], [255.0]
    data = classifier_metadata(name, "Image classifier compiled by edgeeff: the input is the RGB crop of "
                                     "manifest.json's preprocess; the output scores labels.txt's classes.",
                               mean, std, low, high, version)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8).copy()
    model.metadata = list(model.metadata or [])
    entry = next((m for m in model.metadata if m.name in (METADATA_NAME, METADATA_NAME.encode())), None)
    if entry is not None:  # already there (a file written again): replaced in place
        model.buffers[entry.buffer] = buffer
    else:
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
        model.metadata.append(entry)
    save(model, path)
    packed = io.BytesIO(path.read_bytes())
    packed.seek(0, io.SEEK_END)
    with zipfile.ZipFile(packed, "a", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo(LABELS_FILE, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, "\n".join(labels) + "\n")
    path.write_bytes(packed.getvalue())
    info = {"schema": "TFLite metadata (metadata_schema.fbs)", "min_parser_version": MIN_PARSER_VERSION,
            "input": {"normalization": {"mean": mean, "std": std}, "color_space": "RGB"},
            "labels": LABELS_FILE, "classes": len(labels)}
    if len(set(mean)) > 1 or len(set(std)) > 1:
        info["note"] = PER_CHANNEL_NOTE
    return info


# Measured on the B0 android files (ImageNet mean/std per channel): MediaPipe 1.2.3 refuses them.
PER_CHANNEL_NOTE = ("per-channel normalisation: MediaPipe's ImageClassifier refuses it ('Per-channel image "
                    "normalization is not available', mediapipe 1.2.3); the Lite models' one mean/std runs there")
