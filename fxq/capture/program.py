"""Capture: torch.export a model into an ATen graph fxq can place quantizers in.

The captured graph keeps aten.linear / layer_norm / matmul / softmax (pre-dispatch ops) and has
every scaled_dot_product_attention rewritten into matmul -> (+mask) -> softmax -> matmul with the
attention scale applied to Q, so eager and SDPA attention give one and the same graph shape. Then
fxq.capture.transforms.canonicalize gives every attention block that shape and records each site: the
only graph rewrites before fxq/conversion/insert.py.
"""
from __future__ import annotations

import contextlib
import math
import os
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_map

from fxq.errors import CaptureError
from fxq.capture.transforms import canonicalize


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


def _batched(inputs: Inputs) -> set[int]:
    """Positions (in inputs.tensors() order) of the tensors whose dim 0 is the batch.

    The batch size is dim 0 of the first tensor input; an input whose dim 0 differs (an id table, a
    per-model constant) is not batched and stays static.
    """
    tensors = inputs.tensors()
    first = next((t for t in tensors if t.dim() > 0), None)
    if first is None:
        return set()
    return {i for i, t in enumerate(tensors) if t.dim() > 0 and t.shape[0] == first.shape[0]}


def export_args(inputs: Inputs, dynamic_batch: bool, dynamic_seq: bool = False) -> tuple[Inputs, object]:
    """(example inputs, dynamic_shapes) for torch.export.

    Dim 0 of every batched input is dynamic when asked; with dynamic_seq, so is dim 1 of batched
    integer inputs (token ids, masks). Dims are Dim.AUTO: one the model itself fixes (a broadcast
    constant) stays static instead of failing the capture.
    """
    if not dynamic_batch and not dynamic_seq:
        return inputs, None
    batched = _batched(inputs)
    tensors = inputs.tensors()
    _seq_dim = lambda t: t.dim() >= 2 and not t.is_floating_point()  # noqa: E731  token ids and masks
    if dynamic_batch:
        # torch.export specialises size-1 dims, so a dynamic batch is captured from an example of two.
        ids = {id(t) for i, t in enumerate(tensors) if i in batched and t.shape[0] == 1}
        inputs = inputs.map(lambda t: t.expand(2, *t.shape[1:]).clone() if id(t) in ids else t)
        tensors = inputs.tensors()
    if dynamic_seq:  # the same for a one-token sequence: a size-1 dim would stay static in silence
        ids = {id(t) for i, t in enumerate(tensors) if i in batched and _seq_dim(t) and t.shape[1] == 1}
        inputs = inputs.map(lambda t: t.expand(t.shape[0], 2, *t.shape[2:]).clone() if id(t) in ids else t)
        tensors = inputs.tensors()
    auto = torch.export.Dim.AUTO
    spec = {}
    for i, t in enumerate(tensors):
        dims = {}
        if dynamic_batch and i in batched:
            dims[0] = auto
        if dynamic_seq and i in batched and _seq_dim(t):
            dims[1] = auto
        spec[id(t)] = dims or None
    # a non-tensor argument (a dict of options, None) gets a spec of its own structure, all static
    dyn = lambda t: spec.get(id(t)) if isinstance(t, torch.Tensor) else tree_map(lambda _: None, t)  # noqa: E731
    if inputs.kwargs and not inputs.args:
        return inputs, {k: dyn(v) for k, v in inputs.kwargs.items()}
    if inputs.args and not inputs.kwargs:
        return inputs, tuple(dyn(a) for a in inputs.args)
    return inputs, (tuple(dyn(a) for a in inputs.args), {k: dyn(v) for k, v in inputs.kwargs.items()})


def dynamic_shapes_from_json(spec, inputs: Inputs):
    """A JSON-friendly dynamic_shapes ({"input_ids": {"0": "batch", "1": {"name": "seq", "max": 512}}})
    as torch.export's.

    A dim is a name or {"name", "min", "max"}; equal names share one torch.export.Dim; "auto" is
    Dim.AUTO. Positional inputs use their index ("0", "1", ...) as the key.
    """
    if spec is None:
        return None
    dims: dict[str, object] = {}

    def dim(v):
        name, bounds = (v, {}) if isinstance(v, str) else (v["name"], {k: v[k] for k in ("min", "max") if k in v})
        if name == "auto":
            return torch.export.Dim.AUTO
        return dims.setdefault(name, torch.export.Dim(name, **bounds))

    def one(entry):
        if entry is None:
            return None
        return {int(k): dim(v) for k, v in entry.items()}

    if inputs.kwargs and not inputs.args:
        return {k: one(spec.get(k)) for k in inputs.kwargs}
    return tuple(one(spec.get(str(i))) for i in range(len(inputs.args)))


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch: usually the model line export choked on."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}torch{os.sep}" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno} ({f.name}): {f.line}"


@contextlib.contextmanager
def _no_kv_cache(model: torch.nn.Module, inputs: Inputs):
    """Hugging Face models return a KV cache object by default (use_cache=True): torch.export cannot
    output it, and a deployed encoder or prefill graph has no use for it. Capture with caching off."""
    cfg = getattr(model, "config", None)
    if inputs.kwargs.get("use_cache") is True:
        raise CaptureError("example inputs set use_cache=True; fxq captures graphs without a KV cache; "
                           "fix: drop use_cache from the example inputs (fxq turns caching off)")
    if cfg is None or not getattr(cfg, "use_cache", False):
        yield
        return
    name = type(model).__name__
    if getattr(cfg, "is_decoder", False) or "CausalLM" in name or "LMHead" in name:  # encoders never return one
        warnings.warn(f"fxq: capturing {name} with use_cache=False (a KV cache cannot be exported)", stacklevel=4)
    cfg.use_cache = False
    try:
        yield
    finally:
        cfg.use_cache = True


def _by_parameter_name(model: torch.nn.Module, inputs: Inputs, spec: tuple) -> dict:
    """(args spec, kwargs spec) as torch.export wants it for a call with both: keyed by forward's parameter
    names (a pipeline calls a denoiser with hidden states positional and the timestep by keyword)."""
    import inspect

    names = list(inspect.signature(model.forward).bind_partial(*inputs.args).arguments)
    return {**dict(zip(names, spec[0])), **spec[1]}


def export_model(model: torch.nn.Module, inputs: Inputs, dynamic_batch: bool = False, dynamic_seq: bool = False,
                 dynamic_shapes=None) -> torch.export.ExportedProgram:
    if dynamic_shapes is None:
        inputs, dynamic_shapes = export_args(inputs, dynamic_batch, dynamic_seq)
        if inputs.args and inputs.kwargs and dynamic_shapes is not None:
            dynamic_shapes = _by_parameter_name(model, inputs, dynamic_shapes)
    try:
        with _no_kv_cache(model, inputs):
            ep = torch.export.export(model, inputs.args, inputs.kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    except CaptureError:
        raise
    except Exception as e:  # torch.export raises many types; all mean "cannot capture"
        lines = str(e).strip().splitlines()
        first = lines[0] if lines else type(e).__name__
        where = _user_frame(e)
        # torch's constraint errors end with the dims that would work ("seq = Dim('seq', max=64)"): keep them.
        fixes = [x.strip() for x in lines[lines.index("Suggested fixes:") + 1:] if "Dim(" in x] \
            if "Suggested fixes:" in lines else []
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__}: {type(e).__name__}: {first}"
            + (f"\n  torch suggests: {'; '.join(fixes)}" if fixes else "")
            + (f"\n  at {where}" if where else "")
            + "\n  fix: make that code traceable (no data-dependent Python control flow, no .item()/.tolist() on "
            "activations), or pass example inputs that match the model's forward signature."
        ) from e
    if not ep.graph.find_nodes(op="call_function", target=torch.ops.aten.scaled_dot_product_attention.default):
        return ep  # eager attention: nothing to rewrite, and a re-trace costs seconds on large models
    return ep.run_decompositions({torch.ops.aten.scaled_dot_product_attention.default: sdpa_as_matmuls})


STATE_KINDS = ("PARAMETER", "BUFFER", "CONSTANT_TENSOR")


def tag_state(ep: torch.export.ExportedProgram) -> int:
    """Mark the placeholders that carry parameters, buffers and constants with their state name
    (node.meta["fxq_state"]): placement treats them as weights and constants, never as inputs."""
    specs = {s.arg.name: s.target for s in ep.graph_signature.input_specs if s.kind.name in STATE_KINDS}
    tagged = 0
    for node in ep.graph.find_nodes(op="placeholder"):
        if node.name in specs:
            node.meta["fxq_state"] = specs[node.name]
            tagged += 1
    return tagged


def capture_program(model: torch.nn.Module, example_inputs: Any, dynamic_batch: bool = False,
                    dynamic_seq: bool = False, dynamic_shapes=None) -> torch.export.ExportedProgram:
    """The one torch.export of the pipeline: an ExportedProgram with SDPA as matmuls, state tagged, in the
    canonical form fxq places on, with every GEMM / attention / LayerNorm site recorded in node meta."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fxq quantizes torch.nn.Module objects, got {type(model).__name__}")
    inputs = Inputs.of(example_inputs)
    was_training = model.training
    model.eval()
    try:
        ep = export_model(model, inputs, dynamic_batch, dynamic_seq, dynamic_shapes)
    finally:
        model.train(was_training)
    gm = ep.graph_module
    drop_metadata_asserts(gm)
    # Dead readers (attention weights a module computes but nobody returns) would hide the
    # single-reader softmax -> BMM2 chain; FX keeps impure nodes.
    gm.graph.eliminate_dead_code()
    gm.recompile()
    tag_state(ep)  # before the matchers: a GEMM's weight is found by its state tag
    canonicalize(gm)  # views above softmax, scales onto Q, every site recorded (counts in gm.meta)
    return ep


def capture(model: torch.nn.Module, example_inputs: Any, dynamic_batch: bool = False) -> torch.fx.GraphModule:
    """Export `model` and return a graph module with parameters as get_attr nodes (for PT2E)."""
    return capture_program(model, example_inputs, dynamic_batch).module()  # already cleaned by capture_program


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


