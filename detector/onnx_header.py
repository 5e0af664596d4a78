"""Read an ONNX file's interface without the ``onnx`` package: a minimal protobuf wire reader.

:func:`read_header` returns the model's IR version, its graph inputs and outputs (names and declared
shapes), the names of its initializers and its ``metadata_props``; weights are skipped, never decoded.
It is what :func:`detector.onnx_models.inspect_onnx` (and through it
:meth:`detector.spec.DetectorSpec.resolved`) reads, so that a worker that only runs a model never
imports ``onnx`` (about a second of import time, ml_dtypes included).

Field numbers (``onnx.proto``): ``ModelProto`` 1 ir_version, 7 graph, 14 metadata_props
(``StringStringEntryProto`` 1 key, 2 value); ``GraphProto`` 5 initializer (``TensorProto`` 8 name),
11 input, 12 output (``ValueInfoProto`` 1 name, 2 type); ``TypeProto`` 1 tensor_type
(``Tensor`` 2 shape); ``TensorShapeProto`` 1 dim (``Dimension`` 1 dim_value, 2 dim_param).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OnnxHeader", "ProtobufError", "read_header"]


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


@dataclass(frozen=True)
class OnnxHeader:
    """``inputs`` / ``outputs``: ``(name, shape)`` with each dimension an int, a name, or ``None``."""

    ir_version: int
    has_graph: bool
    inputs: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    outputs: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    initializers: frozenset[str] = frozenset()
    metadata: dict[str, str] = field(default_factory=dict)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, Any]]:
    """``(field number, value)``: an int for varint / fixed fields, a memoryview for bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise ProtobufError("truncated fixed field")
            value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ProtobufError("truncated length-delimited field")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        yield number, value


def _text(value: Any) -> str:
    try:
        return bytes(value).decode("utf-8")
    except (UnicodeDecodeError, TypeError) as exc:
        raise ProtobufError("a string field is not UTF-8") from exc


def _sub(value: Any) -> memoryview:
    if not isinstance(value, memoryview):
        raise ProtobufError("expected a message")
    return value


def _value_info(buf: memoryview) -> tuple[str, tuple[Any, ...]]:
    name, dims = "", []
    for number, value in _fields(buf):
        if number == 1:
            name = _text(value)
        elif number == 2:  # TypeProto
            for n2, v2 in _fields(_sub(value)):
                if n2 != 1:  # tensor_type
                    continue
                for n3, v3 in _fields(_sub(v2)):
                    if n3 != 2:  # shape
                        continue
                    for n4, v4 in _fields(_sub(v3)):
                        if n4 != 1:  # dim
                            continue
                        dim: Any = None
                        for n5, v5 in _fields(_sub(v4)):
                            if n5 == 1 and isinstance(v5, int):
                                dim = v5
                            elif n5 == 2:
                                dim = _text(v5) or None
                        dims.append(dim)
    return name, tuple(dims)


def read_header(data: bytes) -> OnnxHeader:
    """The interface of the ONNX model serialised in ``data``; raises :class:`ProtobufError`."""
    buf = memoryview(data)
    ir_version, graph, metadata = 0, None, {}
    for number, value in _fields(buf):
        if number == 1 and isinstance(value, int):
            ir_version = value
        elif number == 7:
            graph = _sub(value)
        elif number == 14:
            entry = {n: _text(v) for n, v in _fields(_sub(value)) if n in (1, 2)}
            metadata[entry.get(1, "")] = entry.get(2, "")
    if graph is None:
        return OnnxHeader(ir_version, False, metadata=metadata)
    inputs, outputs, initializers = [], [], set()
    for number, value in _fields(graph):
        if number == 11:
            inputs.append(_value_info(_sub(value)))
        elif number == 12:
            outputs.append(_value_info(_sub(value)))
        elif number == 5:
            initializers.update(_text(v) for n, v in _fields(_sub(value)) if n == 8)
    return OnnxHeader(ir_version, True, tuple(inputs), tuple(outputs), frozenset(initializers), metadata)
