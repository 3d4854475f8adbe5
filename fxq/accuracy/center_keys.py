"""Center attention keys: subtract each K channel's calibrated mean, folded into the K projection bias.

Softmax over keys ignores a constant added to every score of a query, and q . (k - mu) = q . k - q . mu
is such a constant, so the float model computes the same attention with K - mu as with K. FP8 does
not ignore it: some models (DINOv2) carry a large, nearly constant channel in K, which sets K's
per-tensor scale and leaves every other K value a few FP8 steps wide. Centering removes that
channel's offset before it is quantized. In the exported graph it is just a different bias of the
K GEMM: no new op, nothing for TensorRT to fuse differently.

Only K projections whose output reaches BMM1's K operand alone, through views/transposes, and
that have a bias, are changed (a fused QKV GEMM is left as it is): the attention record capture
wrote names that GEMM (AttentionRecord.k_gemm).
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch.fx import Node

from fxq.placement import records
from fxq.placement.attention import recorded_blocks
from fxq.calibration.run import run_calibration
from fxq.capture.program import Inputs, capture
from fxq.graph_utils import state_name
from fxq.conversion.insert import observer_node


def _k_projections(gm: torch.fx.GraphModule) -> dict[str, Node]:
    """bias name -> K projection GEMM, for every block whose record names one that has a bias parameter."""
    gemms = {rec.group: (node, rec) for node, rec in records.gemms(gm)}
    out = {}
    for block in recorded_blocks(gm):
        if block.record.k_gemm is None:
            continue
        node, rec = gemms[block.record.k_gemm]
        bias = state_name(rec.bias(node))
        if bias is not None:
            out[bias] = node
    return out


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
    biases = _k_projections(gm)
    means = {name: _Mean() for name in biases}
    for i, (name, proj) in enumerate(biases.items()):
        with gm.graph.inserting_after(proj):
            node = observer_node(gm, f"fxq_k_mean_{i}", means[name], proj, name)
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

