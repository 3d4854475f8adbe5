"""Which FP8 codes each GEMM weight gets, from the config: the glue between fxq.quantize and the math.

`codes_chooser(config, layouts, stats)` returns the `codes_for` hook of fxq.conversion.insert.quantize_weights:
round-to-nearest or GPTQ (fxq/accuracy/weight_rounding.py), per-tensor or per output channel. Weights are
handled in the GEMM's [N, K] orientation and handed back in their stored layout (HF Conv1D and
`x @ W` store W^T [K, N], whose output channels are axis 1; a conv weight [out, in, *kernel] is
handled as [out, in * kernel], output channels on axis 0).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from onnx_post import fp8

from fxq.accuracy import weight_rounding as wr
from fxq.config import QuantConfig
from fxq.calibration.hessian import InputStats
from fxq.conversion.insert import WeightCodes
from fxq.placement.place import Site

GPTQ_OPTIONS = {"block_size": 128, "damp": 0.01, "act_order": True}  # act-order: +0.4-1.1 dB held out (results/weight_rounding.md)


def channel_scale(w_nk: torch.Tensor) -> torch.Tensor:
    """max |W[n, :]| / 448 per output channel, rounded up to values every graph dtype stores exactly
    (fp8.portable_scale: a normal FP16 number, never 0 there; bf16's 8 significant bits)."""
    return fp8.portable_scale(wr.weight_scale(w_nk, axis=0))


def codes_chooser(config: QuantConfig, transposed: Mapping[str, bool],
                  stats: Mapping[str, InputStats] | None = None,
                  ) -> Callable[[Site, torch.Tensor, float], torch.Tensor | WeightCodes] | None:
    """The codes_for hook for `config`; None where the default (nearest, per-tensor) applies.

    transposed: weight site key -> True where the weight is stored [K, N] (fxq.calibration.hessian.weight_readers).
    stats: weight site key -> its GEMM input's Hessian (needed for weight_rounding="gptq").
    """
    gptq = config.weight_rounding == "gptq"
    if not gptq and config.weight_axis is None:
        return None
    if gptq and stats is None:
        raise ValueError("weight_rounding='gptq' needs input Hessians from calibration data")

    def codes_for(site: Site, w: torch.Tensor, scale: float) -> torch.Tensor | WeightCodes:
        t = transposed.get(site.key, False)  # conv weights are not listed: [out, ...] as stored
        w_nk = w.detach().float()
        w_nk = w_nk.T if t else w_nk.reshape(w.shape[0], -1)  # a conv weight [out, in, *kernel] as [out, in*kernel]
        s = channel_scale(w_nk) if config.weight_axis == 0 else torch.tensor(scale, dtype=torch.float32)
        if gptq and site.key in stats:
            codes = wr.gptq_fp8(w_nk, stats[site.key].hessian, s, **GPTQ_OPTIONS)
        else:  # nearest, or a weight whose GEMMs never ran during calibration
            codes = wr.round_nearest(w_nk, s)
        codes = codes.T.contiguous() if t else codes.reshape(w.shape)
        if config.weight_axis == 0:
            return WeightCodes(codes, s, axis=1 if t else 0)
        return codes

    return codes_for
