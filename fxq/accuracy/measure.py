"""The metric with a set of groups left in float: by full forwards, or from cached prefixes.

Sensitivity and the fallback ask this question for many sets that differ from one base set (all
FP8, or what the fallback has chosen so far) by a group or two. exhaustive=True answers each with a
full forward over the eval batches (the reference path, kept for tests and comparisons); the
default starts each forward at the first consumer any changed group has (fxq.accuracy.prefix),
which computes the same outputs, bit for bit, in a fraction of the time.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Iterable, Sequence

import torch

from fxq.accuracy.groups import Evaluator, GroupEdges, Switch
from fxq.accuracy.prefix import PrefixRunner
from fxq.conversion import fused_qdq
from fxq.conversion.fake_quant_view import FakeQuantView

MEMORY_SHARE = 0.25  # of the free memory on the eval device, at most, for the base's and the all-FP8 cached
# activations; a kept measurement (measure(..., keep=True)) may hold as much again as the base's half


class GroupMeasure:
    """measure(groups) -> the metric with those group ids in float and every other group in FP8."""

    def __init__(self, view: FakeQuantView, evaluator: Evaluator, groups: Sequence[GroupEdges],
                 exhaustive: bool = False, memory_budget: int | None = None, fused: bool | None = None):
        """fused: run Q/DQ fused (fxq/conversion/fused_qdq.py); None: where groups x one pass takes long."""
        self.switch, self.evaluator = Switch(view), evaluator
        self.edges = {ge.group.id: ge.edges for ge in groups}
        nodes = list(view.module.graph.nodes)
        pos = {n: i for i, n in enumerate(nodes)}
        self.first = {g: min(pos[c] for _, c in edges) for g, edges in self.edges.items()}
        self.end = len(nodes) - 1
        self.base: frozenset[str] = frozenset()
        self.n_batches = len(evaluator.batches)
        self.runner = None
        # (floated set, checkpoints per batch) of the last measure(..., keep=True): a rebase to that set adopts them
        # instead of running the pass again. One such set at most is held beside the base's.
        self.kept: tuple[frozenset[str], list[dict]] | None = None
        # floated set -> {batch index: metric}: a set measured again (the fallback's singletons, first on one batch
        # to rank them, then on all) reuses the batches it has. Prefix runs give full forwards' outputs bit for bit,
        # whatever the base, so a batch's value depends on the set alone.
        self.values: dict[frozenset[str], dict[int, float]] = {}
        self.fused = False  # the base pass runs eager: its time decides (below)
        t = time.perf_counter()
        if not exhaustive:
            budget = memory_budget if memory_budget is not None else free_memory_budget(evaluator.batches)
            # half the budget: the all-FP8 activations stay cached next to the current base's (measure_alone)
            self.runner = PrefixRunner(view.module, view.float_of, evaluator.batches, list(self.first.values()),
                                       budget // 2)
            self.all_fp8 = [dict(saved) for saved in self.runner.saved]
        self.baseline = self.measure(())  # prefix path: from the last checkpoint, the base pass just ran
        self.full_seconds = self.runner.full_seconds if self.runner else time.perf_counter() - t
        # Sensitivity measures every group once, the fallback at least that much: when that work is long, run
        # Q/DQ fused (the same values; compiling costs seconds up front, so short searches stay eager).
        self.fused = fused_qdq.worth_compiling(len(groups) * self.full_seconds) if fused is None else fused

    def measure(self, floated: Iterable[str], batches: Sequence[int] | None = None, keep: bool = False) -> float:
        """The metric over eval batches `batches` (default: all) with `floated` in float. keep: hold this run's
        checkpoints, so that rebase(floated) next costs nothing (the fallback's greedy rebases to the set it
        measured last)."""
        floated = frozenset(floated)
        if not keep or self.runner is None or batches is not None:
            return self._measure(floated, batches)
        self.kept = None  # free the previous ones first
        kept = [{} for _ in range(self.n_batches)]
        value = self._measure(floated, None, kept)
        self.kept = (floated, kept)
        return value

    def measure_alone(self, floated: Iterable[str], batches: Sequence[int] | None = None) -> float:
        """measure(floated, batches), from the all-FP8 activations whatever the base is now."""
        if self.runner is None:
            return self.measure(floated, batches)
        base, saved = self.base, self.runner.saved
        self.base, self.runner.saved = frozenset(), self.all_fp8
        try:
            return self.measure(floated, batches)
        finally:
            self.base, self.runner.saved = base, saved

    def rebase(self, floated: Iterable[str]) -> None:
        """Make `floated` the base: later sets are measured from its activations (one pass from where it
        differs from the old base; nothing to do on the exhaustive path)."""
        floated = frozenset(floated)
        kept, self.kept = self.kept, None
        if kept is not None and kept[0] == floated and self.runner is not None:
            for saved, new in zip(self.runner.saved, kept[1]):
                saved.update(new)  # the checkpoints past where floated differs; those before are the base's
        elif self.runner is not None and floated != self.base:
            start = self.start(floated)
            with self._floated(floated), torch.no_grad(), self._qdq():
                for i in range(self.n_batches):
                    self.runner.run(i, start, rebase=True)
        self.base = floated

    def _measure(self, floated: frozenset[str], batches, kept: list[dict] | None = None) -> float:
        """kept: a dict per eval batch that receives the run's checkpoints (the base's stay as they are)."""
        with self._floated(floated), self._qdq():
            if self.runner is None:
                return self.evaluator.measure(indices=batches)
            start = self.start(floated)
            known = self.values.setdefault(floated, {}) if kept is None else None  # a kept run saves every batch
            return self.evaluator.measure(
                lambda i: self.runner.run(i, start, save_to=None if kept is None else kept[i]), batches, known)

    def _qdq(self):
        return fused_qdq.fused_cpu_qdq() if self.fused else contextlib.nullcontext()

    def _floated(self, floated: frozenset[str]):
        return self.switch.floated([e for g in sorted(floated) for e in self.edges[g]])

    def start(self, floated: frozenset[str]) -> int:
        """The first graph position where `floated` can differ from the base."""
        return min((self.first[g] for g in floated ^ self.base), default=self.end)

    def seconds(self, floated: Iterable[str], n_batches: int | None = None) -> float:
        """Estimated seconds of measure(floated) over n_batches (default: all) eval batches."""
        share = (n_batches or self.n_batches) / self.n_batches
        if self.runner is None:
            return share * self.full_seconds
        return self.runner.suffix_seconds(self.start(frozenset(floated)), n_batches)


def free_memory_budget(batches) -> int:
    """MEMORY_SHARE of what is free on the batches' device (the host's available memory for CPU)."""
    device = next((t.device for b in batches for t in b.tensors()), torch.device("cpu"))
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(MEMORY_SHARE * free)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(MEMORY_SHARE * int(info["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        return 2 << 30  # no /proc: 2 GiB


def minutes(seconds: float) -> str:
    """'45 s' or '3.2 min': for progress lines."""
    if not math.isfinite(seconds):
        return "unknown"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"

