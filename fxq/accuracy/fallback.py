"""Budgeted FP16 fallback: keep as many FP8 FLOPs as possible while the metric stays within budget.

The greedy (fxq/accuracy/greedy.py) leaves in float, one at a time, the GEMM or attention block that
gains the most metric per FP8 FLOP given up, until the metric is within budget; a final pass puts
back into FP8 any choice the budget no longer needs, largest first.

Three ways to run it, all on the same measurements (fxq/accuracy/measure.py):
- exact (default): every choice as the exhaustive greedy makes it; measurements start from cached
  activations, and candidates are ranked on one eval batch before the top ones are measured exactly
  (fxq/accuracy/rank.py says when that could choose differently).
- Fallback(quick=True): the greedy runs on the first eighth of the eval batches (the proxy), with the
  budget scaled by the proxy's share of the all-FP8 metric. Its choice is then measured on every eval
  batch: if the metric is over budget, the proxy's next choices are added, each measured, until it is
  not; then each choice is put back where the proxy says the budget may still hold, each measured. The
  result always meets max_error on the whole eval data (measured, not estimated); which groups stay in
  float, and how many, can differ from the exact path's (results/fallback_speed.md measures by how
  much), and a quick choice's gain is the proxy's estimate.
- Fallback(exhaustive=True): every measurement a full forward, every candidate ranked exactly; the
  reference the other two are tested against.

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
from fxq.accuracy.greedy import lazy_greedy
from fxq.accuracy.groups import Evaluator, check_metric, group_edges
from fxq.accuracy.measure import GroupMeasure, free_memory_budget, minutes
from fxq.accuracy.rank import estimate_seconds
from fxq.placement.place import Placement

KINDS = ("attention", "gemm", "conv")
LONG_S = 300  # an exact search estimated longer than this (at 20 groups in float) suggests quick=True


@dataclass
class Fallback:
    """fxq.quantize(..., fallback=fxq.Fallback(eval_data, max_error)).

    eval_data: batches like example_inputs (held out from calibration is best).
    max_error: the budget for `metric`, averaged over eval_data (default metric: 1 - cosine of
    the first output against the float model).
    kinds: what may fall back; ("gemm",) keeps every attention block in FP8.
    quick: choose on the first eighth of eval_data, then measure the choice on all of it and correct it
    (minutes where the exact search takes many; the budget holds, the choices can differ: see above).
    exhaustive: measure every candidate exactly with full forwards, as fxq did before the fast path
    (fxq/accuracy/rank.py says when the two can differ); for comparisons and tests.
    """

    eval_data: Any
    max_error: float
    metric: Any = None
    kinds: tuple[str, ...] = KINDS
    max_remeasure: int = 8  # stale candidates re-measured per step, at most
    exhaustive: bool = False  # True: every measurement a full forward, every candidate ranked exactly (slow)
    quick: bool = False  # True: choose on a proxy eighth of eval_data, then check and correct on all of it

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
        for flag in ("exhaustive", "quick"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"Fallback {flag} must be True or False, got {getattr(self, flag)!r}")
        if self.exhaustive and self.quick:
            raise ValueError("Fallback quick=True and exhaustive=True contradict each other (quick estimates "
                             "on part of eval_data, exhaustive measures everything); fix: set one of them")
        if not isinstance(self.max_remeasure, int) or self.max_remeasure < 1:
            raise ValueError(f"Fallback max_remeasure must be a positive int, got {self.max_remeasure!r}")


@dataclass
class Choice:
    group: str
    kind: str
    module: str
    flops: int
    gain: float  # metric before minus metric after this choice, when it was made (quick: the proxy's estimate)


@dataclass
class FallbackPlan:
    all_fp8: float  # the metric with nothing left in float
    final: float  # the metric with `choices` left in float
    max_error: float
    choices: list[Choice] = field(default_factory=list)
    evaluations: int = 0  # metric evaluations: each over every eval batch, or (quick) over the proxy's batches
    proxy_batches: int = 0  # quick: the eval batches the greedy ran on (0: it ran on all of them)
    checked: list[float] = field(default_factory=list)  # quick: the metric of each set measured on every eval
    # batch, in order: the proxy's choice, then each correction (while over budget) and each put-back tried

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(c.group for c in self.choices)


def search(view: FakeQuantView, evaluator: Evaluator, placement: Placement, fallback: Fallback,
           progress: bool = True) -> FallbackPlan:
    """Choose the groups of `placement` to leave in float so that the metric is <= fallback.max_error,
    measured on the fake-quant `view` by `evaluator` (its references: the float program's outputs)."""
    edges = [ge for ge in group_edges(view.module, placement, kinds=fallback.kinds) if ge.group.flops > 0]
    candidates = {ge.group.id: ge.group for ge in edges}
    n_batches = len(evaluator.batches)
    n_proxy = proxy_batches(n_batches) if fallback.quick else 0
    # quick: the proxy's cached activations come out of the same memory share, by batch count
    memory = free_memory_budget(evaluator.batches) if n_proxy else None
    groups = GroupMeasure(view, evaluator, edges, exhaustive=fallback.exhaustive,
                          memory_budget=memory and memory * (n_batches - n_proxy) // n_batches)
    plan = FallbackPlan(groups.baseline, groups.baseline, fallback.max_error)
    if groups.baseline <= fallback.max_error:
        return plan
    proxy = proxy_calls = None
    if n_proxy:
        proxy = GroupMeasure(view, evaluator.head(n_proxy), edges, fused=groups.fused,
                             memory_budget=memory * n_proxy // n_batches)
        proxy_calls = proxy.evaluator
        if not proxy.baseline > 0:  # the proxy batches show no FP8 error: nothing to scale the budget by
            proxy, n_proxy = None, 0
            if progress:
                tqdm.write("fxq fallback: the proxy's eval batches show no FP8 error, so quick=True cannot scale "
                           "the budget to them: the exact search runs", file=sys.stderr)
    if progress:
        tqdm.write(_time_estimate(proxy or groups, list(candidates), fallback, groups), file=sys.stderr)
    bar = tqdm(desc="fxq fallback", unit="eval", disable=not progress)

    def tick(current: float, n_chosen: int) -> None:
        bar.update(1)
        bar.set_postfix(metric=f"{current:.3g}", budget=f"{fallback.max_error:.3g}", fp16=n_chosen)

    try:
        if proxy is None:
            _exact(plan, groups, candidates, fallback, tick)
        else:
            _quick(plan, groups, proxy, candidates, fallback, tick)
    finally:
        bar.close()
    plan.evaluations = evaluator.calls + (proxy_calls.calls if proxy_calls else 0)
    plan.proxy_batches = n_proxy
    return plan


def proxy_batches(n_batches: int) -> int:
    """Eval batches the quick search chooses on: the first eighth (at least one); 0 where that leaves nothing
    to check against (one batch)."""
    return max(1, n_batches // 8) if n_batches >= 2 else 0


def _time_estimate(ranked: GroupMeasure, ids: list[str], fallback: Fallback, full: GroupMeasure) -> str:
    ranking, step = estimate_seconds(ranked.seconds, ids, ranked.n_batches, fallback.max_remeasure,
                                     fallback.exhaustive)
    head = f"fxq fallback: {len(ids)} candidate groups; ranking them takes about {minutes(ranking)}, "
    if ranked is full:
        line = head + (f"then about {minutes(2 * step)} per group left in float (one full pass over "
                       f"{full.n_batches} eval batches: {full.full_seconds:.1f} s)")
        if not (fallback.exhaustive or fallback.quick) and proxy_batches(full.n_batches) and \
                ranking + 20 * 2 * step > LONG_S:
            line += ("; Fallback(..., quick=True) chooses on an eighth of the eval batches and checks the "
                     "choice on all of them, in a fraction of the time")
        return line
    return head + (f"on {ranked.n_batches} of {full.n_batches} eval batches (quick), then about {minutes(2 * step)} "
                   f"per group left in float, and a full pass over all {full.n_batches} "
                   f"({full.full_seconds:.1f} s) per check of the choice")


def _out_of_reach(fallback: Fallback, metric: float) -> ConfigError:
    return ConfigError(f"Fallback max_error {fallback.max_error:g} is out of reach: with every "
                       f"{'/'.join(fallback.kinds)} group in float the metric is still {metric:.4g}; "
                       "fix: raise max_error, or allow more kinds")


def _choose(plan: FallbackPlan, group, gain: float) -> None:
    plan.choices.append(Choice(group.id, group.kind, group.module, group.flops, gain))


def _exact(plan: FallbackPlan, groups: GroupMeasure, candidates: dict, fallback: Fallback, tick) -> None:
    flops = {g: group.flops for g, group in candidates.items()}
    for g, value in lazy_greedy(groups, flops, fallback.max_remeasure, fallback.exhaustive, tick):
        _choose(plan, candidates[g], plan.final - value)
        plan.final = value
        if value <= fallback.max_error:
            break
    else:
        raise _out_of_reach(fallback, plan.final)
    for c in sorted(plan.choices[:-1], key=lambda c: -c.flops):  # put back what the budget no longer needs
        rest = [g for g in plan.groups if g != c.group]
        value = groups.measure(rest, keep=True)
        tick(plan.final, len(plan.choices))
        if value <= fallback.max_error:
            plan.final = value
            plan.choices.remove(c)
            groups.rebase(rest)


def _quick(plan: FallbackPlan, full: GroupMeasure, proxy: GroupMeasure, candidates: dict, fallback: Fallback,
           tick) -> None:
    """The greedy on `proxy` until its metric is within the scaled budget; then measured on every batch
    (`full`), corrected by the proxy's next choices while over budget, and thinned by measured put-backs."""
    scale = proxy.baseline / full.baseline  # proxy metric per unit of the full one, at all FP8
    budget = fallback.max_error
    # predict(p) = the full metric of a set whose proxy metric is p, from the last set measured on both
    last = {"full": full.baseline, "proxy": proxy.baseline}
    predict = lambda p: last["full"] + (p - last["proxy"]) / scale  # noqa: E731
    error = 0.0  # the largest |predicted - measured| seen
    needed = None  # a choice the budget is known to need: the set without it was measured over budget
    over = False  # a check of the proxy's choice found it over budget: check every later choice too

    def check(floated: list[str], p: float) -> float:
        nonlocal error
        value = full.measure(floated, keep=True)
        tick(plan.final, len(floated))
        plan.checked.append(value)
        error = max(error, abs(predict(p) - value))
        return value

    def adopt(floated: list[str], value: float, p: float) -> None:
        """`floated`, measured at `value` (proxy: p), is the choice now: later runs and predictions start there."""
        plan.final = value
        last.update(full=value, proxy=p)
        full.rebase(floated)

    flops = {g: group.flops for g, group in candidates.items()}
    p_current = proxy.baseline
    on_proxy = lambda p, n: tick(p / scale, n)  # noqa: E731  (the bar shows the proxy's metric scaled to the full one)
    for g, p in lazy_greedy(proxy, flops, fallback.max_remeasure, False, on_proxy):
        _choose(plan, candidates[g], (p_current - p) / scale)
        p_current = p
        if p > scale * budget and not over:
            continue  # the proxy says: not yet
        value = check(list(plan.groups), p)
        adopt(list(plan.groups), value, p)
        needed = g if over else None
        if value <= budget:
            break
        over = True
    else:  # every candidate in float
        if not over:
            adopt(list(plan.groups), check(list(plan.groups), p_current), p_current)
        if plan.final > budget:
            raise _out_of_reach(fallback, plan.final)
    for c in sorted(plan.choices, key=lambda c: -c.flops):  # put back what the budget may not need
        if c.group == needed:
            continue
        rest = [g for g in plan.groups if g != c.group]
        p = proxy.measure(rest)
        on_proxy(p, len(plan.choices))
        if predict(p) > budget + 2 * error:
            continue  # the proxy says it would not hold, by more than twice any miss seen
        value = check(rest, p)
        if value <= budget:
            plan.choices.remove(c)
            adopt(rest, value, p)
            proxy.rebase(rest)
