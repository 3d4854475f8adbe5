"""The fallback's greedy over one GroupMeasure: which group to leave in float next.

Each step takes the group whose float version gains the most metric per FP8 FLOP given up, measured
on top of what is already chosen. Scores go stale after each choice; they are re-measured lazily (the
best stale candidate is re-measured until the best score is a fresh one), so a step costs a few
evaluations rather than one per group. The first scores are the singletons (each group alone in
float), exact or ranked on one eval batch first (fxq/accuracy/rank.py).

A stale score keeps its share of the error, not its absolute gain (`stale_gain`): a group that removed
a third of the error when it was measured is expected to remove a third of what is left. Absolute
stale gains went negative after the first choice (each was measured against a larger error than is
left), and dividing a negative gain by FLOPs ranked the largest GEMMs first for re-measurement, ahead
of attention blocks that gain far more per FLOP (results/fallback_speed.md measures both rules).
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping

from fxq.accuracy.measure import GroupMeasure
from fxq.accuracy.rank import Singletons


def stale_gain(value: float, measured_on: float, current: float) -> float:
    """The gain expected now (the chosen set's metric is `current`) from a group whose set measured `value`
    on top of a base whose metric was `measured_on`: the same share of the error. Fresh, or with no error left
    to share (a metric at or below 0: quick's proxy can get there), the measured gain itself."""
    if measured_on == current or measured_on <= 0 or current <= 0:
        return current - value
    return current * (measured_on - value) / measured_on


Tick = Callable[[float, int], None]  # tick(metric of the current choice, groups chosen): after each evaluation


def lazy_greedy(groups: GroupMeasure, flops: Mapping[str, int], max_remeasure: int, exhaustive: bool,
                tick: Tick) -> Iterator[tuple[str, float]]:
    """Yields (group, metric with it and every earlier choice in float), best gain per FLOP first, from
    groups.baseline until no candidate is left. `groups` is rebased to the choices before each yield."""
    current = groups.baseline
    chosen: list[str] = []

    def measure(floated: list[str], batches=None, alone: bool = False) -> float:
        # a set measured on top of the base may become the next base: keep its checkpoints for the rebase
        value = groups.measure_alone(floated, batches) if alone else groups.measure(floated, batches, keep=True)
        tick(current, len(chosen))
        return value

    # each alone in float: exact everywhere (exhaustive), or estimated and made exact where it can matter
    alone = lambda floated, batches=None: measure(floated, batches, alone=True)  # noqa: E731  (nothing chosen)
    singles = Singletons(alone, flops, current, groups.n_batches, max_remeasure, exhaustive)
    after = dict(singles.exact)  # exact values only: each alone, or re-measured on top of `chosen`
    measured_on = dict.fromkeys(flops, current)  # the metric of the base each value of `after` was measured on
    fresh = set(after)
    score = lambda g: stale_gain(after[g], measured_on[g], current) / flops[g]  # noqa: E731
    upper = lambda g: stale_gain(singles.lowest_possible(g), measured_on[g], current) / flops[g]  # noqa: E731

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

    while len(chosen) < len(flops):
        remaining = [g for g in flops if g not in chosen]
        for _ in range(max_remeasure):
            best = best_stale(remaining)
            if best in fresh:
                break
            after[best], measured_on[best] = measure(chosen + [best]), current
            fresh.add(best)
        best = max((g for g in remaining if g in fresh), key=score)
        chosen.append(best)
        current = after[best]
        fresh = set()
        groups.rebase(chosen)
        yield best, current
