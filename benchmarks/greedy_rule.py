"""The fallback greedy's stale-score rule, side by side on one calibrated DINOv2: what each keeps in FP8.

Three searches on the same fake-quant view, the same eval batches and the same budget:
- relative: fxq's rule (fxq/accuracy/greedy.py): a stale score keeps its share of the error;
- absolute: the rule before it: a stale score keeps its absolute gain (patched in for this run);
- full: no stale scores at all: every step measures every remaining candidate on top of the choice
  (the greedy both lazy rules try to reproduce; slow: one pass per candidate per step).
All three end with the same put-back pass. Each row: groups left in FP16, the GEMM FLOPs and attention
blocks still in FP8, the final metric, evaluations and seconds.

    python -m benchmarks.greedy_rule --device cuda --bundle B      # on the GPU (the full greedy is slow on a CPU)
    python -m benchmarks.greedy_rule --samples 64 --size 42        # a CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fxq
from benchmarks.fallback_speed import _record, dinov2_data
from fxq.accuracy import fallback, greedy
from fxq.accuracy.groups import Evaluator, group_edges
from fxq.accuracy.measure import GroupMeasure
from fxq.conversion.fake_quant_view import fake_quant_view
from fxq.pipeline import Request, StageClock, calibrated


def _absolute(value: float, measured_on: float, current: float) -> float:
    return current - value


def full_greedy(view, evaluator, placement, budget: float) -> fallback.FallbackPlan:
    """The greedy with every candidate measured again at every step, then fxq's put-back pass."""
    edges = [ge for ge in group_edges(view.module, placement) if ge.group.flops > 0]
    candidates = {ge.group.id: ge.group for ge in edges}
    groups = GroupMeasure(view, evaluator, edges)
    plan = fallback.FallbackPlan(groups.baseline, groups.baseline, budget)
    while plan.final > budget:
        chosen = list(plan.groups)
        values = {g: groups.measure(chosen + [g]) for g in candidates if g not in chosen}
        best = max(values, key=lambda g: (plan.final - values[g]) / candidates[g].flops)
        fallback._choose(plan, candidates[best], plan.final - values[best])
        plan.final = values[best]
        groups.rebase(plan.groups)
    for c in sorted(plan.choices[:-1], key=lambda c: -c.flops):
        rest = [g for g in plan.groups if g != c.group]
        value = groups.measure(rest)
        if value <= budget:
            plan.final = value
            plan.choices.remove(c)
            groups.rebase(rest)
    plan.evaluations = evaluator.calls
    return plan


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--size", type=int, default=84)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--budget-fractions", type=float, nargs="+", default=[0.5, 0.25],
                    help="budgets as fractions of the all-FP8 1 - cosine (default 0.5 0.25)")
    ap.add_argument("--rules", nargs="+", choices=("relative", "absolute", "full"),
                    default=["relative", "absolute", "full"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--out", type=Path, default=Path("results/greedy_rule.jsonl"))
    args = ap.parse_args(argv)
    model, calib, evals = dinov2_data(args.samples, args.size, args.batch, args.device, args.bundle)
    example = {"pixel_values": calib[0]["pixel_values"][:2]}
    cal = calibrated(Request.check(model, example, calib, progress=False), StageClock())
    view = fake_quant_view(cal.program, cal.placement, cal.calibration.amax, cal.codes)
    gemm_flops = sum(g.flops for g in cal.placement.groups if g.kind == "gemm")
    blocks = sum(1 for g in cal.placement.groups if g.kind == "attention")
    rows = []
    for fraction in args.budget_fractions:
        for rule in args.rules:
            evaluator = Evaluator(cal.program.module(), view.module, evals, None)
            budget = fraction * evaluator.measure()
            t = time.perf_counter()
            if rule == "full":
                plan = full_greedy(view, evaluator, cal.placement, budget)
            else:
                saved = greedy.stale_gain
                greedy.stale_gain = greedy.stale_gain if rule == "relative" else _absolute
                try:
                    plan = fallback.search(view, evaluator, cal.placement, fxq.Fallback(evals, budget), progress=False)
                finally:
                    greedy.stale_gain = saved
            fp16_gemm = sum(c.flops for c in plan.choices if c.kind == "gemm")
            row = {"rule": rule, "budget_fraction": fraction, "budget": budget, "final": plan.final,
                   "fp16_groups": len(plan.choices), "fp8_gemm_flop_share": 1 - fp16_gemm / gemm_flops,
                   "fp8_attention": blocks - sum(c.kind == "attention" for c in plan.choices),
                   "evaluations": plan.evaluations, "seconds": time.perf_counter() - t, "groups": list(plan.groups),
                   "samples": args.samples, "size": args.size, "device": args.device}
            _record(args.out, row)
            rows.append(row)
    print(f"\n| budget | rule | FP16 groups | FP8 GEMM FLOPs | FP8 attention | final | evaluations | s |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget_fraction']:g} x all-FP8 | {r['rule']} | {r['fp16_groups']} | "
              f"{100 * r['fp8_gemm_flop_share']:.1f}% | {r['fp8_attention']}/{blocks} | {r['final']:.4g} | "
              f"{r['evaluations']} | {r['seconds']:.1f} |")
    print(json.dumps({"done": len(rows)}))


if __name__ == "__main__":
    main()
