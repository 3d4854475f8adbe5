"""The fallback's first pass: what leaving each candidate alone in float gains, ranked cheaply first.

The exhaustive path measures every candidate on every eval batch. The fast path measures every
candidate on the first eval batch only (a proxy for its gain), then measures exactly, in proxy
order, at least `min_exact` candidates and every further one whose proxy score is within twice
the largest proxy error seen so far of the best exact score. A candidate is left unmeasured only
when its proxy score is below the best exact score by more than that margin; its proxy value then
stands in as a stale estimate, which the greedy re-measures before it could ever choose it. So the
first choice is the exhaustive path's unless some unmeasured candidate's proxy error exceeds twice
every error seen; later choices can differ only through such an error too (tested on models with
known answers; benchmarks/fallback_speed.py compares both paths on DINOv2 and MiniLM).
"""
from __future__ import annotations

from typing import Callable, Mapping

Measure = Callable[..., float]  # measure(floated groups, batches=None) -> metric


def singletons(measure: Measure, flops: Mapping[str, int], current: float, n_batches: int, min_exact: int,
               exhaustive: bool) -> tuple[dict[str, float], set[str]]:
    """(metric with each group alone in float, the groups measured exactly on every batch)."""
    if exhaustive or n_batches < 2:  # one batch: the proxy would be the exact measurement
        return {g: measure([g]) for g in flops}, set(flops)
    proxy_base = measure([], batches=[0])
    after = {g: current - (proxy_base - measure([g], batches=[0])) for g in flops}  # the proxy's gain, shifted
    score = lambda g: (current - after[g]) / flops[g]  # noqa: E731
    exact: set[str] = set()
    best, margin = -float("inf"), 0.0
    for g in sorted(flops, key=score, reverse=True):
        if len(exact) >= min_exact and score(g) < best - 2 * margin:
            break  # sorted by proxy score: every later candidate is further below
        proxy = score(g)
        after[g] = measure([g])
        exact.add(g)
        best, margin = max(best, score(g)), max(margin, abs(proxy - score(g)))
    return after, exact


def estimate_seconds(seconds: Callable[..., float], groups: list[str], n_batches: int, min_exact: int,
                     exhaustive: bool) -> tuple[float, float]:
    """(seconds of `singletons`, seconds of one later measurement), from the measure's timings."""
    alone = [seconds([g]) for g in groups]
    mean = sum(alone) / max(len(alone), 1)
    if exhaustive or n_batches < 2:
        return sum(alone), mean
    proxy = sum(seconds([g], 1) for g in groups)
    return proxy + min(min_exact, len(groups)) * mean, mean
