"""Small helpers over torch.fx graphs shared by the placement passes."""
from __future__ import annotations

import torch
from torch.fx import Node

aten = torch.ops.aten


def module_path(node: Node) -> str:
    """Deepest module on the node's nn_module_stack ('' for the root or nodes without one)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""


def shape_of(node) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def static_dim(node, dim: int) -> int | None:
    shape = shape_of(node)
    if shape is None or not shape:
        return None
    d = shape[dim]
    return d if isinstance(d, int) else None


def _hint(d) -> int:
    """A dim as an int: static dims as they are, symbolic ones (dynamic batch) at the example's value."""
    if isinstance(d, int):
        return d
    hint = getattr(getattr(d, "node", None), "hint", None)
    return int(hint) if hint is not None else 1


def matmul_flops(node) -> int:
    """2*M*N*K of a GEMM / matmul node from its static shapes (first operand's last dim is K)."""
    out = node.meta.get("val") if isinstance(node, Node) else None
    a = node.args[1] if node.target is aten.addmm.default else node.args[0]
    a_shape = shape_of(a)
    if not isinstance(out, torch.Tensor) or not a_shape:
        return 0
    numel = 1
    for d in out.shape:
        numel *= _hint(d)
    return 2 * numel * _hint(a_shape[-1])


def constant_scalar(arg) -> float | None:
    """A Python number, or a graph node that is a constant 0-d tensor (torch.full([], c) and kin)."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return float(arg)
    if not isinstance(arg, Node) or arg.op != "call_function":
        return None
    if arg.target in (aten.full.default, aten.new_full.default):
        size, value = (arg.args[0], arg.args[1]) if arg.target is aten.full.default else (arg.args[1], arg.args[2])
        if all(s == 1 for s in size) and isinstance(value, (int, float)):
            return float(value)
    if arg.target is aten.scalar_tensor.default and isinstance(arg.args[0], (int, float)):
        return float(arg.args[0])
    if arg.target in (aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device):
        return constant_scalar(arg.args[0])
    return None


def copy_module_stack(new: Node, like: Node) -> None:
    for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
        if key in like.meta:
            new.meta[key] = like.meta[key]


def state_name(node) -> str | None:
    """The parameter/buffer/constant a node reads directly: a get_attr target, or a placeholder that
    capture tagged as lifted state (fxq.capture.program.tag_state). None for everything else."""
    if not isinstance(node, Node):
        return None
    if node.op == "get_attr":
        return str(node.target)
    if node.op == "placeholder":
        return node.meta.get("fxq_state")
    return None


def depends_on_input(node) -> bool:
    """True when `node` reads a graph input (placeholder) upstream; parameters and constants do not."""
    seen, stack = set(), [node]
    while stack:  # iterative: deep graphs would overflow recursion
        n = stack.pop()
        if not isinstance(n, Node) or n in seen:
            continue
        if n.op == "placeholder" and state_name(n) is None:
            return True
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return False


def fake_call(target, args: tuple, kwargs: dict | None = None):
    """Run `target` on the fake tensors in the args' meta["val"]: the meta for a node fxq creates."""
    from torch.fx.node import map_arg

    vals = []
    real_args = map_arg(args, lambda n: vals.append(n.meta.get("val")) or n.meta.get("val"))
    real_kwargs = map_arg(kwargs or {}, lambda n: n.meta.get("val"))
    mode = next((v.fake_mode for v in vals if hasattr(v, "fake_mode")), None)
    if mode is None:
        return None
    with mode:
        return target(*real_args, **real_kwargs)


def hoist_before(value: Node, anchor: Node) -> int:
    """Move `value` and whatever it needs that sits after `anchor` to just before `anchor`.

    For constant subgraphs only (parameters -> ops): they read no activations, so moving them
    earlier keeps the graph valid. Returns how many nodes moved.
    """
    order = {n: i for i, n in enumerate(anchor.graph.nodes)}
    late, stack = set(), [value]
    while stack:
        n = stack.pop()
        if isinstance(n, Node) and n not in late and order[n] > order[anchor]:
            late.add(n)
            stack.extend(n.all_input_nodes)
    for n in sorted(late, key=order.__getitem__):
        anchor.prepend(n)
    return len(late)


def attr_value(gm, target: str):
    """What a get_attr node with this target reads from `gm` (a dotted path)."""
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def set_attr_value(gm, target: str, value: torch.Tensor) -> None:
    """Replace the tensor at a get_attr target, keeping its kind (parameter, buffer or plain attribute)."""
    *path, name = target.split(".")
    mod = gm.get_submodule(".".join(path)) if path else gm
    if name in mod._parameters:
        mod._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    elif name in mod._buffers:
        mod._buffers[name] = value
    else:
        setattr(mod, name, value)
