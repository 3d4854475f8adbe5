"""Find convolutions with a parameter weight and record each one (fxq.placement.records.ConvRecord).

torch.export's pre-dispatch graph holds nn.Conv1d/2d/3d as aten.conv1d/conv2d/conv3d(x, W, bias, stride,
padding, dilation, groups) (trailing defaults dropped; padding may be a string such as "same") and,
after run_decompositions, as aten.convolution(x, W, bias, stride, padding, dilation, transposed,
output_padding, groups). Transposed convolutions are not recorded: TensorRT's FP8 rules below are for
forward convolutions, and fxq leaves deconvolutions in float.

What TensorRT's FP8 convolution needs, as NVIDIA's own ONNX quantizer encodes it (NVIDIA/Model-Optimizer,
modelopt/onnx/quantization/graph_utils.py, find_nodes_from_convs_to_exclude): input and output channels
of at least 16 (fxq asks for multiples of 16, the tensor-core tile: an RGB stem and a 4-channel VAE latent
stay float), a filter of at most 32 taps (3x3, 5x5 and 3x3x3 qualify, 7x7 does not), and a constant weight.
Grouped and depthwise convolutions have no FP8 tensor-core kernel and stay float. fxq.placement.place
applies these as Skips (conv_grouped, conv_channels_not_16, conv_kernel_too_large).
"""
from __future__ import annotations

import math

from torch.fx import GraphModule, Node

from fxq.graph_utils import _hint, aten, shape_of, state_name
from fxq.placement.records import CONV, ConvRecord, write_records

MAX_FP8_CONV_FILTER = 32  # taps (kernel volume), ModelOpt's FP8 limit

CONV_ND = {aten.conv1d.default: 1, aten.conv2d.default: 2, aten.conv3d.default: 3}
for _op, _d in ((getattr(aten.conv1d, "padding", None), 1), (getattr(aten.conv2d, "padding", None), 2),
                (getattr(aten.conv3d, "padding", None), 3)):
    if _op is not None:
        CONV_ND[_op] = _d


def _arg(node: Node, i: int, name: str, default):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _tuple(v, dims: int):
    if isinstance(v, str):
        return v  # "same" / "valid"
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * dims if len(v) == 1 else v)


def conv_form(node: Node) -> dict | None:
    """ConvRecord's fields (all but group/module/node/weight/flops) for a forward conv, else None."""
    if node.op != "call_function":
        return None
    if node.target in CONV_ND:
        dims = CONV_ND[node.target]
        geometry = dict(stride=_arg(node, 3, "stride", 1), padding=_arg(node, 4, "padding", 0),
                        dilation=_arg(node, 5, "dilation", 1), groups=_arg(node, 6, "groups", 1))
    elif node.target is aten.convolution.default and not node.args[6]:
        w_shape = shape_of(node.args[1])
        dims = len(w_shape) - 2 if w_shape else 0
        geometry = dict(stride=node.args[3], padding=node.args[4], dilation=node.args[5], groups=node.args[8])
    else:
        return None
    w = node.args[1]
    w_shape = shape_of(w)
    if state_name(w) is None or w_shape is None or len(w_shape) != dims + 2 or not isinstance(geometry["groups"], int):
        return None
    bias = _arg(node, 2, "bias", None)
    groups = geometry["groups"]
    return dict(input_arg=0, weight_arg=1, bias_arg=2 if isinstance(bias, Node) else None, dims=dims,
                in_channels=int(w_shape[1]) * groups, out_channels=int(w_shape[0]), groups=groups,
                kernel=tuple(int(k) for k in w_shape[2:]), stride=_tuple(geometry["stride"], dims),
                padding=_tuple(geometry["padding"], dims), dilation=_tuple(geometry["dilation"], dims))


def conv_flops(node: Node, in_per_group: int, kernel: tuple[int, ...]) -> int:
    """2 * (output elements) * (input channels per group) * (kernel volume) per example batch."""
    out = shape_of(node)
    if out is None:
        return 0
    return 2 * math.prod(_hint(d) for d in out) * in_per_group * math.prod(kernel)


def _conv_fields(node: Node) -> dict | None:
    form = conv_form(node)
    if form is None:
        return None
    flops = conv_flops(node, form["in_channels"] // form["groups"], form["kernel"])
    return dict(node=node.name, weight=state_name(node.args[1]), flops=flops, **form)


def record_convs(gm: GraphModule) -> int:
    """Write a ConvRecord on every forward conv with a parameter weight (and clear stale ones)."""
    return write_records(gm, CONV, "conv", ConvRecord, _conv_fields)
