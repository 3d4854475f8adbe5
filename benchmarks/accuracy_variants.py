"""How benchmarks/accuracy.py builds each fxq variant it scores: quantized on a Task's calibration batches.

One job: turn a Task and a config into a quantized model, and say where it placed FP8 (the placement
columns every results row carries). The plain FP16 baseline (no_fp8, nothing quantized) and the
fallback budget sweep (choose_fallback: the tightest budget on the eval split that keeps enough GEMM
FLOPs in FP8) live here too, since the recipe and conv benchmarks build their variants the same way.
"""
from __future__ import annotations

import dataclasses
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import fxq  # noqa: E402
from fxq.accuracy.groups import fp8_attention_blocks, fp8_gemm_flop_share  # noqa: E402

from benchmarks.accuracy_tasks import _to  # noqa: E402

# Fallback budgets tried, as fractions of the all-FP8 metric on the eval split; the one used is
# the tightest whose fallback keeps >= MIN_GEMM_SHARE of GEMM FLOPs in FP8 (decided on the eval
# split alone, never on the test set).
BUDGET_FRACTIONS = (0.7, 0.5, 0.35, 0.25)
MIN_GEMM_SHARE = 0.90
NO_FP8 = fxq.QuantConfig(roles=fxq.RoleSpecs(**{f.name: None for f in dataclasses.fields(fxq.RoleSpecs)}))


def no_fp8(model, example):
    """The model through fxq with nothing quantized (no calibration): the plain FP16 baseline's program."""
    return fxq.quantize(model, example, None, NO_FP8, calibration={"version": 1, "batches": 1, "amax": {}},
                        progress=False)


def _quantize(task, model, config, device, **kw):
    calib = [_to(b, device) for b in task.calib]
    return fxq.quantize(model, _to(task.example, device), calib, config, progress=False, **kw)


def _placement_info(qm) -> dict:
    p = qm.placement
    return {"gemm_fp8_share": fp8_gemm_flop_share(p), "attention_fp8": fp8_attention_blocks(p),
            "attention_blocks": p.attention_blocks, "fallback": list(qm.quant_config.fallback)}


def choose_fallback(task, model, qm_default, device, kinds, log, fractions=BUDGET_FRACTIONS) -> tuple:
    """Sweep the budgets on the eval split; return (chosen qm, sweep rows)."""
    from fxq.accuracy.groups import Evaluator

    evals = [_to(b, device) for b in task.evals]
    all_fp8 = Evaluator(model, qm_default.graph_module, evals, None).measure()
    sweep, chosen = [], None
    for frac in fractions:
        t = time.perf_counter()
        try:
            qm = _quantize(task, model, fxq.preset("tensorrt-fp8"), device,
                           fallback=fxq.Fallback(evals, frac * all_fp8, kinds=kinds))
        except fxq.ConfigError as e:  # e.g. attention alone keeps the metric above a GEMM-only budget
            log(f"  fallback {kinds} budget {frac:.2f}x: {e}")
            continue
        info = {"fraction": frac, "max_error": frac * all_fp8, "all_fp8": all_fp8, "final": qm.fallback_plan.final,
                "evaluations": qm.fallback_plan.evaluations, "seconds": time.perf_counter() - t,
                "gains": {c.group: c.gain for c in qm.fallback_plan.choices}, **_placement_info(qm)}
        log(f"  fallback {kinds} budget {frac:.2f}x: {len(info['fallback'])} groups FP16, "
            f"GEMM FP8 {100 * info['gemm_fp8_share']:.1f}%, attention FP8 {info['attention_fp8']}, "
            f"eval metric {info['final']:.2e} ({info['seconds']:.0f} s)")
        sweep.append((info, qm))
        if info["gemm_fp8_share"] >= MIN_GEMM_SHARE:
            chosen = (info, qm)
    return (chosen or sweep[0]), sweep
