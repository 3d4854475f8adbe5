"""Names in the exported ONNX file that a user recognises: the model's own output names, and
`batch` / `sequence` for the dynamic axes instead of torch's anonymous symbols (s72, s43)."""
from __future__ import annotations

import re

import onnx
import torch

_ANONYMOUS = re.compile(r"^s\d+$")  # torch.export's symbols for Dim.AUTO dims
_AXIS_NAMES = {0: "batch", 1: "sequence"}  # what fxq's capture makes dynamic (capture.export_args)


def _spec_paths(spec, prefix: tuple = ()):
    """Each leaf's path of keys, read off the out spec itself: a dict-like output (a diffusers
    BaseOutput registers no key-path flattening) names its leaves by its keys, anything else by index."""
    if spec.is_leaf():
        yield prefix
        return
    ctx = spec.context._fields if hasattr(spec.context, "_fields") else spec.context  # a namedtuple: its fields
    keyed = isinstance(ctx, (list, tuple)) and len(ctx) == spec.num_children and all(isinstance(k, str) for k in ctx)
    for i, child in enumerate(spec.children()):
        yield from _spec_paths(child, prefix + (ctx[i] if keyed else str(i),))


def output_names(ep: torch.export.ExportedProgram) -> list[str]:
    """One name per flat output: the model's keys (`last_hidden_state`, `logits`), else output_0.."""
    spec = ep.call_spec.out_spec
    if spec is None or spec.num_leaves == 0:
        return []
    if spec.is_leaf():
        return ["output"]
    names = ["_".join(path) for path in _spec_paths(spec)]
    if all(n.isdigit() for n in names):
        names = [f"output_{n}" for n in names]
    return names if len(set(names)) == len(names) else [f"output_{i}" for i in range(len(names))]


def rename_outputs(model: onnx.ModelProto, names: list[str]) -> int:
    """Graph outputs renamed to `names` (and every reader of them); returns how many changed."""
    graph = model.graph
    current = [o.name for o in graph.output]
    if len(names) != len(current) or len(set(current)) != len(current):
        return 0
    taken = {n for node in graph.node for n in [*node.input, *node.output]} | {i.name for i in graph.input} \
        | {i.name for i in graph.initializer}
    renames = {}
    for out, new in zip(graph.output, names):
        passthrough = out.name in {i.name for i in [*graph.input, *graph.initializer]}
        if out.name != new and new not in taken and not passthrough:
            renames[out.name] = new
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for vi in [*graph.output, *graph.value_info]:
        vi.name = renames.get(vi.name, vi.name)
    return len(renames)


def dim_names(model: onnx.ModelProto) -> dict[str, str]:
    """torch's anonymous symbol -> `batch` (dim 0 of an input) / `sequence` (dim 1), from the inputs."""
    names = {}
    for inp in model.graph.input:
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.dim_param and _ANONYMOUS.match(d.dim_param) and d.dim_param not in names:
                names[d.dim_param] = _AXIS_NAMES.get(axis, f"{inp.name}_dim{axis}")
    return names


def rename_dims(model: onnx.ModelProto) -> int:
    """Every symbolic dim (inputs, outputs, value_info; also in expressions such as `s72*16`)
    renamed by dim_names; inputs that share a dimension share its name. Returns dims changed."""
    names = dim_names(model)
    if not names:
        return 0
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    changed = 0
    graph = model.graph
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                new = pattern.sub(lambda m: names[m.group(1)], d.dim_param)
                changed += new != d.dim_param
                d.dim_param = new
    return changed
