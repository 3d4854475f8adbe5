"""Center attention keys: subtract each K channel's calibrated mean, folded into the K projection bias.

Softmax over keys ignores a constant added to every score of a query, and q . (k - mu) = q . k - q . mu
is such a constant, so the float model computes the same attention with K - mu as with K. FP8 does
not ignore it: some models (DINOv2) carry a large, nearly constant channel in K, which sets K's
per-tensor scale and leaves every other K value a few FP8 steps wide. Centering removes that
channel's offset before it is quantized. In the exported graph it is just a different bias of the
K GEMM: no new op, nothing for TensorRT to fuse differently.

Only K projections whose output reaches BMM1's K operand alone, through views/transposes, and
that have a bias, are changed (a fused QKV GEMM is left as it is).
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch.fx import Node

from .attention import find_attention_blocks
from .calibrate import run_calibration
from .capture import Inputs, capture
from .graph_utils import aten

_PASS_THROUGH = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.transpose.int,
                 aten.permute.default, aten.contiguous.default, aten.clone.default, aten.t.default}


def _k_projection(k: Node) -> Node | None:
    """The linear (with bias) whose output is K, through single-reader views and transposes."""
    node = k
    while isinstance(node, Node) and node.op == "call_function" and node.target in _PASS_THROUGH:
        if len(node.users) != 1:
            return None
        node = node.args[0]
    if (isinstance(node, Node) and node.target is aten.linear.default and len(node.args) > 2
            and isinstance(node.args[2], Node) and node.args[2].op == "get_attr" and len(node.users) == 1):
        return node
    return None


class _Mean(torch.nn.Module):
    """Running per-channel mean of the last dim (a calibration observer without quantization)."""

    def __init__(self):
        super().__init__()
        self.sum, self.count = None, 0

    def forward(self, x):
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        self.sum = flat.sum(0) if self.sum is None else self.sum + flat.sum(0)
        self.count += flat.shape[0]
        return x


def center_attention_keys(model: torch.nn.Module, example_inputs: Any, calib_data: Iterable) -> tuple[torch.nn.Module, int]:
    """A copy of `model` whose K projection biases are shifted by -mean(K) over `calib_data`.

    Returns (centered copy, how many K projections were centered). Quantize the copy as usual;
    in float it computes the same outputs as `model` (to float rounding).
    """
    example = Inputs.of(example_inputs)
    gm = capture(model, example, dynamic_batch=True)
    biases = {}
    for block in find_attention_blocks(gm):
        proj = _k_projection(block.bmm1.args[1])
        if proj is not None:
            biases[str(proj.args[2].target)] = proj
    means = {name: _Mean() for name in biases}
    for i, (name, proj) in enumerate(biases.items()):
        obs = f"fxq_k_mean_{i}"
        gm.add_submodule(obs, means[name])
        with gm.graph.inserting_after(proj):
            node = gm.graph.call_module(obs, (proj,))
        for user in list(proj.users):
            if user is not node:
                user.replace_input_with(proj, node)
    gm.recompile()
    run_calibration(gm, {}, calib_data, example, progress=False)
    centered = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in means.items():
            bias = centered.get_parameter(name)
            bias -= (m.sum / max(m.count, 1)).to(bias.dtype)
    return centered, len(means)

