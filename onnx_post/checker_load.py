"""Opening a file for the checker: refuse what is not a regular, loadable, valid ONNX model before reading it.

Every file is treated as hostile: /dev/zero or a FIFO would make a reader hang or eat memory, so
they are refused from their metadata; external data is only read inside the model's folder
(onnx_post/external_data.py); and a graph onnx.checker rejects (a cycle, an unknown op, bad types)
is reported as invalid rather than half-checked.
"""
from __future__ import annotations

import stat
from pathlib import Path

import onnx

from onnx_post import skeleton
from onnx_post.external_data import check_external_data

MAX_MODEL_BYTES = 2**31  # protobuf cannot parse a larger message; larger models keep their weights in .data files


class NotOnnxModelError(ValueError):
    """The file parsed as protobuf but holds no ONNX graph (an empty file does that)."""


class UnloadableFileError(ValueError):
    """Not a regular file, or larger than the checker can load: refused before reading a byte."""


class InvalidModelError(ValueError):
    """onnx.checker rejects the graph (a cycle, an unknown op, mismatched types, ...)."""


def load_model(model_or_path) -> tuple[onnx.ModelProto, str]:
    """(model without external weights, the folder its external data lives in), after every check above."""
    if isinstance(model_or_path, onnx.ModelProto):
        model, base_dir = model_or_path, ""
    else:
        path = Path(model_or_path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        if not path.exists():
            raise FileNotFoundError(f"no such file: {path}")
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise UnloadableFileError(f"{path} is not a regular file (a device, FIFO or socket)")
        if st.st_size > MAX_MODEL_BYTES:
            raise UnloadableFileError(f"{path} is {st.st_size / 2**30:.1f} GiB, more than the 2 GiB a protobuf "
                                      f"can hold; save the weights as external data")
        # External weights stay on disk; the few small tensors read (scales, zero points) are read on demand.
        model = onnx.load(str(path), load_external_data=False)
        if not model.HasField("graph") and not model.opset_import:
            raise NotOnnxModelError(f"{path} holds no ONNX graph")
        base_dir = str(path.parent)
        check_external_data(model, base_dir)  # unsafe or truncated external data is an I/O error, not a finding
    try:
        skeleton.check(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise InvalidModelError(_first_line(e)) from None
    return model, base_dir


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
