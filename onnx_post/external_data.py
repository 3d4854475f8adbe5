"""Reading a model's external data safely: only regular files inside the model's folder.

A hostile ONNX file can point `location` anywhere (/etc/shadow, ../../secret, a symlink, a FIFO) and
give any offset and length. onnx.load and onnxruntime refuse those; so does every read here:
relative paths only, no `..`, no symlink anywhere on the way, the resolved path inside the folder,
a regular file, offset and length non-negative integers within the file. Messages name the tensor
and the location the model gave, never the size of a file.
"""
from __future__ import annotations

import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

_BYTES = {TensorProto.FLOAT8E4M3FN: 1, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.FLOAT: 4,
          TensorProto.DOUBLE: 8, TensorProto.INT64: 8, TensorProto.INT32: 4, TensorProto.INT8: 1, TensorProto.UINT8: 1,
          TensorProto.BOOL: 1, TensorProto.INT16: 2, TensorProto.UINT16: 2}


class ExternalDataError(OSError):
    """An initializer's external data is missing, truncated, or points somewhere the checker must not read."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


_UNSAFE_FIX = "external data must be a file inside the model's folder, named by a relative path"


def nbytes(t: TensorProto) -> int | None:
    """Bytes the tensor's elements take, from dtype and dims (None for dtypes not listed)."""
    per = _BYTES.get(t.data_type)
    return None if per is None else per * int(np.prod(t.dims, dtype=np.int64))


def _number(t: TensorProto, key: str, value: str) -> int:
    if not re.fullmatch(r"[0-9]{1,19}", value):
        raise ExternalDataError(f"tensor '{t.name}' has external-data {key} {value[:40]!r}, not a non-negative integer",
                                "the file is malformed; export it again")
    return int(value)


def locate(t: TensorProto, base_dir: str) -> tuple[Path, int, int | None]:
    """(file, offset, length) of an external tensor, after every safety check; length None = to the end."""
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if not location or "\x00" in location:
        raise ExternalDataError(f"tensor '{t.name}' has external data without a valid location", _UNSAFE_FIX)
    shown = repr(location[:200])
    posix, win = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or win.is_absolute() or win.drive or location.startswith(("/", "\\")):
        raise ExternalDataError(f"tensor '{t.name}' has an absolute external-data location {shown}", _UNSAFE_FIX)
    if ".." in posix.parts or ".." in win.parts:
        raise ExternalDataError(f"tensor '{t.name}' has an external-data location with '..': {shown}", _UNSAFE_FIX)
    base = Path(base_dir or ".")
    path = base
    for part in posix.parts:
        path = path / part
        if path.is_symlink():
            raise ExternalDataError(f"tensor '{t.name}' has an external-data location through a symlink: {shown}",
                                    _UNSAFE_FIX)
    if not path.resolve().is_relative_to(base.resolve()):
        raise ExternalDataError(f"tensor '{t.name}' has an external-data location outside the model's folder: "
                                f"{shown}", _UNSAFE_FIX)
    try:
        st = path.stat()
    except OSError:
        raise ExternalDataError(f"external data file {shown} of tensor '{t.name}' does not exist",
                                "copy the complete .data file next to the model") from None
    if not stat.S_ISREG(st.st_mode):
        raise ExternalDataError(f"external data {shown} of tensor '{t.name}' is not a regular file", _UNSAFE_FIX)
    offset = _number(t, "offset", info.get("offset", "0"))
    length = _number(t, "length", info["length"]) if "length" in info else nbytes(t)
    want = nbytes(t)
    if length is not None and want is not None and length != want:
        raise ExternalDataError(f"tensor '{t.name}' says its external data is {length} bytes long, its shape and "
                                f"dtype take {want}", "the file is malformed; export it again")
    end = offset + (length or 0)
    if end > st.st_size:  # the message names the model's numbers only, never the file's size
        raise ExternalDataError(f"external data file {shown} is truncated: tensor '{t.name}' needs bytes "
                                f"{offset}..{end}", "copy the complete .data file next to the model")
    return path, offset, length


def read_bytes(t: TensorProto, base_dir: str) -> np.ndarray:
    """An external tensor's bytes as uint8, memory-mapped (no copy of a large weight)."""
    path, offset, length = locate(t, base_dir)
    if length is None:
        length = path.stat().st_size - offset
    if length == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(length,))


def to_array(t: TensorProto, base_dir: str) -> np.ndarray:
    """numpy_helper.to_array, with external data read only through `locate`'s checks."""
    if t.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    inline = TensorProto()
    inline.CopyFrom(t)
    del inline.external_data[:]
    inline.data_location = TensorProto.DEFAULT
    inline.raw_data = read_bytes(t, base_dir).tobytes()
    return numpy_helper.to_array(inline)


def _node_tensors(nodes):
    for n in nodes:
        for a in n.attribute:
            yield from ([a.t] if a.type == onnx.AttributeProto.TENSOR else a.tensors)
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs):
                yield from g.initializer
                yield from _node_tensors(g.node)


def external_tensors(model: onnx.ModelProto):
    """Every tensor with external data: initializers and Constant values, in subgraphs and functions too."""
    tensors = [*model.graph.initializer, *_node_tensors(model.graph.node),
               *(t for f in model.functions for t in _node_tensors(f.node))]
    return [t for t in tensors if t.data_location == TensorProto.EXTERNAL]


def check_external_data(model: onnx.ModelProto, base_dir: str) -> int:
    """Raise ExternalDataError unless every external tensor's bytes are safe to read and complete; returns the count."""
    n = 0
    for t in external_tensors(model):
        locate(t, base_dir)
        n += 1
    return n
