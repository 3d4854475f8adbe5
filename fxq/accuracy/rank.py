"""The fallback's singletons: the metric with each candidate alone in float, measured exactly only where
the greedy's choice could depend on it.

The exhaustive path measures every candidate alone on every eval batch before the greedy starts.
The fast path estimates each on the first eval batch (a proxy: the batch's gain, shifted onto the
full metric), measures exactly the `min_exact` best by estimate, and leaves the rest to the greedy:
wherever the exhaustive greedy would compare stale singleton scores, the greedy (greedy.py) asks for the
exact value of every candidate whose estimate, less twice the largest estimate error seen so far,
could still beat the best exact score (`lowest_possible`). So the fast path makes the exhaustive
path's choices, the same evaluations aside, as long as no unmeasured estimate is off by more than
twice every error seen; tests/test_fast_fallback.py checks the choices on models with known answers
and benchmarks/fallback_speed.py on DINOv2.
"""
from __future__ import annotations

from typing import Callable, Mapping

Measure = Callable[..., float]  # measure(floated groups, batches=None) -> metric, with no other group in float


class Singletons:
    def __init__(self, measure: Measure, flops: Mapping[str, int], current: float, n_batches: int,
                 min_exact: int, exhaustive: bool):
        self.measure, self.flops = measure, flops
        self.exact: dict[str, float] = {}
        self.estimate: dict[str, float] = {}
        self.error = 0.0  # the largest |estimate - exact| seen
        if exhaustive or n_batches < 2:  # one batch: the proxy would be the exact measurement
            for g in flops:
                self.exact[g] = measure([g])
            return
        proxy_base = measure([], batches=[0])
        self.estimate = {g: current - (proxy_base - measure([g], batches=[0])) for g in flops}
        for g in sorted(flops, key=lambda g: (current - self.estimate[g]) / flops[g], reverse=True)[:min_exact]:
            self.measure_exact(g)

    def measure_exact(self, group: str) -> float:
        value = self.exact[group] = self.measure([group])
        if group in self.estimate:
            self.error = max(self.error, abs(self.estimate[group] - value))
        return value

    def lowest_possible(self, group: str) -> float:
        """The metric with `group` alone in float: exact, or at least the estimate less twice the largest error."""
        return self.exact[group] if group in self.exact else self.estimate[group] - 2 * self.error


def estimate_seconds(seconds: Callable[..., float], groups: list[str], n_batches: int, min_exact: int,
                     exhaustive: bool) -> tuple[float, float]:
    """(seconds of the singletons' first pass, seconds of one later measurement), from the measure's timings."""
    alone = [seconds([g]) for g in groups]
    mean = sum(alone) / max(len(alone), 1)
    if exhaustive or n_batches < 2:
        return sum(alone), mean
    proxy = sum(seconds([g], 1) for g in groups)
    return proxy + min(min_exact, len(groups)) * mean, mean
