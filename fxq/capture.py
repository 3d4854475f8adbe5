"""Capture: torch.export a model into an ATen graph fxq can place quantizers in.

The captured graph keeps aten.linear / layer_norm / matmul / softmax (pre-dispatch ops) and has
every scaled_dot_product_attention rewritten into matmul -> (+mask) -> softmax -> matmul with the
attention scale applied to Q, so eager and SDPA attention give one and the same graph shape.
"""
from __future__ import annotations

import copy
import math
import os
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from .errors import CaptureError


@dataclass
class Inputs:
    """Example inputs normalised to (args, kwargs)."""

    args: tuple
    kwargs: dict

    @classmethod
    def of(cls, example) -> "Inputs":
        if isinstance(example, Inputs):
            return example
        if isinstance(example, torch.Tensor):
            return cls((example,), {})
        if isinstance(example, (tuple, list)):
            return cls(tuple(example), {})
        if isinstance(example, dict) or hasattr(example, "keys"):  # dict or a tokenizer's BatchEncoding
            return cls((), dict(example))
        raise TypeError(
            f"example inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs, "
            f"got {type(example).__name__}"
        )

    def tensors(self):
        return [t for t in list(self.args) + list(self.kwargs.values()) if isinstance(t, torch.Tensor)]

    def map(self, fn) -> "Inputs":
        f = lambda t: fn(t) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Inputs(tuple(f(a) for a in self.args), {k: f(v) for k, v in self.kwargs.items()})

    def call(self, module):
        return module(*self.args, **self.kwargs)


def sdpa_as_matmuls(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """scaled_dot_product_attention spelt so each FP8 place exists: scale on Q, then Q @ K^T."""
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        groups = q.shape[-3] // k.shape[-3]
        k = k.repeat_interleave(groups, dim=-3)
        v = v.repeat_interleave(groups, dim=-3)
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    w = torch.matmul(q * s, k.transpose(-2, -1))  # (B, nh, T, S)
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        w = w.masked_fill(keep.logical_not(), float("-inf"))
    if attn_mask is not None:
        w = w.masked_fill(attn_mask.logical_not(), float("-inf")) if attn_mask.dtype == torch.bool else w + attn_mask
    return torch.matmul(torch.softmax(w, dim=-1), v)  # (B, nh, T, hs)


def export_args(inputs: Inputs, dynamic_batch: bool) -> tuple[Inputs, object]:
    """(example inputs, dynamic_shapes) for torch.export, with dim 0 dynamic when asked."""
    if not dynamic_batch:
        return inputs, None
    # torch.export specialises size-1 dims, so a dynamic batch is captured from an example of two.
    inputs = inputs.map(lambda t: t.expand(2, *t.shape[1:]).clone() if t.dim() > 0 and t.shape[0] == 1 else t)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dyn = lambda t: {0: batch} if isinstance(t, torch.Tensor) and t.dim() > 0 else None  # noqa: E731
    if inputs.kwargs and not inputs.args:
        return inputs, {k: dyn(v) for k, v in inputs.kwargs.items()}
    return inputs, (tuple(dyn(a) for a in inputs.args) if not inputs.kwargs else None)


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch: usually the model line export choked on."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}torch{os.sep}" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno} ({f.name}): {f.line}"


def export_model(model: torch.nn.Module, inputs: Inputs, dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    inputs, dynamic_shapes = export_args(inputs, dynamic_batch)
    try:
        ep = torch.export.export(model, inputs.args, inputs.kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:  # torch.export raises many types; all mean "cannot capture"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = _user_frame(e)
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__}: {type(e).__name__}: {first}"
            + (f"\n  at {where}" if where else "")
            + "\n  fix: make that code traceable (no data-dependent Python control flow, no .item()/.tolist() on "
            "activations), or pass example inputs that match the model's forward signature."
        ) from e
    if not ep.graph.find_nodes(op="call_function", target=torch.ops.aten.scaled_dot_product_attention.default):
        return ep  # eager attention: nothing to rewrite, and a re-trace costs seconds on large models
    return ep.run_decompositions({torch.ops.aten.scaled_dot_product_attention.default: sdpa_as_matmuls})


def capture(model: torch.nn.Module, example_inputs: Any, dynamic_batch: bool = False) -> torch.fx.GraphModule:
    """Export `model` and return the graph module fxq works on (parameters as get_attr nodes)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fxq quantizes torch.nn.Module objects, got {type(model).__name__}")
    inputs = Inputs.of(example_inputs)
    was_training = model.training
    model.eval()
    try:
        ep = export_model(model, inputs, dynamic_batch)
    finally:
        model.train(was_training)
    gm = ep.module()
    drop_metadata_asserts(gm)
    # Dead readers (attention weights a module computes but nobody returns) would hide the
    # single-reader softmax -> BMM2 chain; FX keeps impure nodes.
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def drop_metadata_asserts(gm: torch.fx.GraphModule) -> int:
    """Remove aten._assert_tensor_metadata nodes (dtype checks .to() leaves behind).

    They are extra readers of tensors such as the softmax output and would hide the
    single-reader chains the attention matcher follows.
    """
    asserts = list(gm.graph.find_nodes(op="call_function", target=torch.ops.aten._assert_tensor_metadata.default))
    for node in asserts:
        gm.graph.erase_node(node)
    gm.recompile()
    return len(asserts)


def as_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of the model in `dtype` (the original stays as it is)."""
    return copy.deepcopy(model).to(dtype)
