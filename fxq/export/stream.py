"""The exported weights left where they are until the file is written (see onnx_post/pending.py).

torch.onnx's model refers to the program's own tensors (no copy). `ir.to_proto` would copy each into the
proto, and the graph passes and the save would copy them again; instead every initializer of
TENSOR_MIN_BYTES or more becomes a stub whose bytes are read from its tensor when the file is written.
"""
from __future__ import annotations

import onnx_ir as ir

from onnx_post.pending import TENSOR_MIN_BYTES, Pending


def stub_initializers(model: ir.Model, pending: Pending, min_bytes: int = TENSOR_MIN_BYTES) -> int:
    """Replace each initializer of `min_bytes` or more by a stub of `pending` that loads it from its tensor.
    Returns how many were replaced."""
    replaced = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None or isinstance(tensor, ir.ExternalTensor) or tensor.nbytes < min_bytes:
                continue
            location = pending.location(tensor.numpy)  # the program's tensor, viewed when it is written
            value.const_value = ir.ExternalTensor(location, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape,
                                                  name=value.name)
            replaced += 1
    return replaced
