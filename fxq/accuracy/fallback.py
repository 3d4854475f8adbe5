"""Budgeted FP16 fallback: keep as many FP8 FLOPs as possible while the metric stays within budget.

Greedy on sensitivity per FLOP: each step leaves in float the GEMM or attention block whose
float version gains the most metric per FP8 FLOP given up, measured on top of what is already
left in float. Scores go stale after each choice; they are re-measured lazily (the best stale
candidate is re-measured until the best score is a fresh one), so a step costs a few
evaluations rather than one per group. A final pass puts back into FP8 any earlier choice the
budget no longer needs, largest first.

Every measurement starts where the measured set first differs from the current choice, from
activations cached for it (fxq/accuracy/measure.py), and the first pass ranks candidates on one
eval batch before measuring the top ones exactly (fxq/accuracy/rank.py says when that can choose
differently); Fallback(exhaustive=True) measures everything with full forwards, as before.

The search runs on the fake-quant view of the calibrated float program (fxq/conversion/fake_quant_view.py);
fxq.quantize then places again on that same program. The result is data: the chosen group ids go
into QuantConfig.fallback, and the placement skips
them with reason "fallback" (a skipped attention block keeps none of its q/k/v/probs Q/DQ; a
skipped GEMM reads its LayerNorm's raw output while the LayerNorm's other readers keep the
shared Q/DQ), so a saved calibration file reproduces the same graph.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from tqdm.auto import tqdm

from fxq.errors import ConfigError
from fxq.conversion.fake_quant_view import FakeQuantView
from fxq.accuracy.groups import Evaluator, check_metric, group_edges
from fxq.accuracy.measure import GroupMeasure, minutes
from fxq.accuracy.rank import Singletons, estimate_seconds
from fxq.placement.place import Placement

KINDS = ("attention", "gemm", "conv")


@dataclass
class Fallback:
    """fxq.quantize(..., fallback=fxq.Fallback(eval_data, max_error)).

    eval_data: batches like example_inputs (held out from calibration is best).
    max_error: the budget for `metric`, averaged over eval_data (default metric: 1 - cosine of
    the first output against the float model).
    kinds: what may fall back; ("gemm",) keeps every attention block in FP8.
    exhaustive: measure every candidate exactly with full forwards, as fxq did before the fast path
    (fxq/accuracy/rank.py says when the two can differ); for comparisons and tests.
    """

    eval_data: Any
    max_error: float
    metric: Any = None
    kinds: tuple[str, ...] = KINDS
    max_remeasure: int = 8  # stale candidates re-measured per step, at most
    exhaustive: bool = False  # True: every measurement a full forward, every candidate ranked exactly (slow)

    def __post_init__(self):
        e = self.max_error
        if isinstance(e, bool) or not isinstance(e, Real):
            raise TypeError(f"Fallback max_error must be a number (the metric budget, e.g. 0.002), got {e!r}")
        if not math.isfinite(float(e)) or e < 0:
            raise ValueError(f"Fallback max_error must be a finite number >= 0, got {e!r}")
        self.max_error = float(e)
        check_metric(self.metric)
        self.kinds = tuple(self.kinds)
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"Fallback kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}")
        if not isinstance(self.exhaustive, bool):
            raise TypeError(f"Fallback exhaustive must be True or False, got {self.exhaustive!r}")
        if not isinstance(self.max_remeasure, int) or self.max_remeasure < 1:
            raise ValueError(f"Fallback max_remeasure must be a positive int, got {self.max_remeasure!r}")


@dataclass
class Choice:
    group: str
    kind: str
    module: str
    flops: int
    gain: float  # metric before minus metric after this choice, when it was made


@dataclass
class FallbackPlan:
    all_fp8: float  # the metric with nothing left in float
    final: float  # the metric with `choices` left in float
    max_error: float
    choices: list[Choice] = field(default_factory=list)
    evaluations: int = 0

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(c.group for c in self.choices)


def search(view: FakeQuantView, evaluator: Evaluator, placement: Placement, fallback: Fallback,
           progress: bool = True) -> FallbackPlan:
    """Choose the groups of `placement` to leave in float so that the metric is <= fallback.max_error,
    measured on the fake-quant `view` by `evaluator` (its references: the float program's outputs)."""
    candidates = {ge.group.id: ge for ge in group_edges(view.module, placement, kinds=fallback.kinds)
                  if ge.group.flops > 0}
    groups = GroupMeasure(view, evaluator, list(candidates.values()), exhaustive=fallback.exhaustive)
    base = current = groups.baseline
    plan = FallbackPlan(base, base, fallback.max_error)
    if current <= fallback.max_error:
        return plan
    flops = {g: ge.group.flops for g, ge in candidates.items()}
    ranking, step = estimate_seconds(groups.seconds, list(flops), groups.n_batches, fallback.max_remeasure,
                                     fallback.exhaustive)
    if progress:
        tqdm.write(f"fxq fallback: {len(flops)} candidate groups; ranking them takes about {minutes(ranking)}, "
                   f"then about {minutes(2 * step)} per group left in float (one full pass over "
                   f"{groups.n_batches} eval batches: {groups.full_seconds:.1f} s)", file=sys.stderr)
    bar = tqdm(desc="fxq fallback", unit="eval", disable=not progress)
    chosen: list[str] = []

    def measure(floated: list[str], batches=None, alone: bool = False) -> float:
        # a set measured on top of the base may become the next base: keep its checkpoints for the rebase
        value = groups.measure_alone(floated, batches) if alone else groups.measure(floated, batches, keep=True)
        bar.update(1)
        bar.set_postfix(metric=f"{current:.3g}", budget=f"{fallback.max_error:.3g}", fp16=len(chosen))
        return value

    # each alone in float: exact everywhere (exhaustive), or estimated and made exact where it can matter
    alone = lambda floated, batches=None: measure(floated, batches, alone=True)  # noqa: E731  (nothing chosen)
    singles = Singletons(alone, flops, current, groups.n_batches, fallback.max_remeasure, fallback.exhaustive)
    after = dict(singles.exact)  # exact values only: each alone, or re-measured on top of `chosen`
    fresh = set(after)
    score = lambda g: (current - after[g]) / flops[g]  # noqa: E731
    upper = lambda g: (current - singles.lowest_possible(g)) / flops[g]  # noqa: E731

    def best_stale(remaining: list[str]) -> str:
        """max(remaining, key=score) as if every singleton were exact: measure those that could win."""
        while True:
            best = max((g for g in remaining if g in after), key=score, default=None)
            doubt = [g for g in remaining if g not in after and (best is None or upper(g) >= score(best))]
            if not doubt:
                return best
            g = max(doubt, key=upper)
            after[g] = singles.measure_exact(g)
            if not chosen:
                fresh.add(g)

    while current > fallback.max_error:
        remaining = [g for g in candidates if g not in chosen]
        if not remaining:
            bar.close()
            raise ConfigError(f"Fallback max_error {fallback.max_error:g} is out of reach: with every "
                              f"{'/'.join(fallback.kinds)} group in float the metric is still {current:.4g}; "
                              "fix: raise max_error, or allow more kinds")
        for _ in range(fallback.max_remeasure):
            best = best_stale(remaining)
            if best in fresh:
                break
            after[best] = measure(chosen + [best])
            fresh.add(best)
        best = max((g for g in remaining if g in fresh), key=score)
        g = candidates[best].group
        plan.choices.append(Choice(g.id, g.kind, g.module, g.flops, current - after[best]))
        chosen.append(best)
        current = after[best]
        fresh = set()
        groups.rebase(chosen)
    for c in sorted(plan.choices[:-1], key=lambda c: -c.flops):  # put back what the budget no longer needs
        rest = [g for g in chosen if g != c.group]
        value = measure(rest)
        if value <= fallback.max_error:
            chosen, current = rest, value
            plan.choices.remove(c)
            groups.rebase(chosen)
    bar.close()
    plan.final, plan.evaluations = current, evaluator.calls
    return plan
