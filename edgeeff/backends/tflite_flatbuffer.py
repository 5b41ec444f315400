"""Reading and writing .tflite flatbuffers with the schema classes ai-edge-litert ships: the model
as mutable objects with every weight inside the flatbuffer, and packed back with each weight
buffer aligned as the schema asks. Shared by the LiteRT backend's edits and the metadata writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def builtin_code(opcode) -> int:
    """An OperatorCode's builtin operator (newer files keep it in builtinCode, older ones in
    deprecatedBuiltinCode)."""
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def load_inlined(path: Path):
    """The model as mutable objects, with every weight buffer inside the flatbuffer.

    litert-torch and ai-edge-quantizer store weights after the flatbuffer (Buffer.offset/size);
    re-packing the object tree without inlining them first silently drops every weight.
    """
    schema_ = schema()
    raw = Path(path).read_bytes()
    model = schema_.ModelT.InitFromPackedBuf(raw, 0)
    for buf in model.buffers:
        if buf.offset > 1:
            buf.data = np.frombuffer(raw[buf.offset:buf.offset + buf.size], np.uint8).copy()
            buf.offset, buf.size = 0, 0
    return model


BUFFER_ALIGNMENT = 16  # the schema's `force_align: 16` on Buffer.data: LiteRT maps aligned weights in place


def save(model, path: Path) -> None:
    """Pack the model, every buffer's data aligned to BUFFER_ALIGNMENT bytes in the file (the
    generated Pack aligns bytes to 1: LiteRT then copies each misaligned weight to the heap)."""
    import flatbuffers

    schema_ = schema()

    def aligned_pack(buffer, builder):
        data = None
        if buffer.data is not None:
            raw = np.ascontiguousarray(buffer.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            data = builder.EndVector()
        schema_.BufferStart(builder)
        if data is not None:
            schema_.BufferAddData(builder, data)
        schema_.BufferAddOffset(builder, buffer.offset)
        schema_.BufferAddSize(builder, buffer.size)
        return schema_.BufferEnd(builder)

    original = schema_.BufferT.Pack
    schema_.BufferT.Pack = aligned_pack
    try:
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    finally:
        schema_.BufferT.Pack = original
    Path(path).write_bytes(builder.Output())
