"""Run a fake-quant view from cached activations: only the part of the graph a change can reach.

Sensitivity and the fallback measure the same graph many times, each time with a few groups left
in float. Everything upstream of a group's first consumer computes exactly what the current
configuration (the base) computes, so the runner keeps, per eval batch, the values that cross
each checkpoint (a group's first consumer) under the base, and starts there. The ops and their
inputs are the ones a full forward runs, so the outputs are bit for bit the same.

A checkpoint's saved values also hold the float node behind every quantizer whose consumer
lies past it: fxq.accuracy.groups.Switch may rewire that consumer to it.
"""
from __future__ import annotations

import bisect
import time
from typing import Callable, Sequence

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg
import torch.fx._pytree as fx_pytree

from fxq.capture.program import Inputs


class PrefixRunner:
    """Forward passes of `gm` over `batches` that start at the latest checkpoint at or before a position.

    positions: graph positions (indices into gm.graph.nodes) worth a checkpoint, e.g. each
    group's first consumer. float_of: quantizer node -> the float node Switch may rewire to.
    budget_bytes: at most this much is kept; checkpoints are thinned (evenly) to fit.
    """

    def __init__(self, gm: GraphModule, float_of: dict[Node, Node], batches: Sequence[Inputs],
                 positions: Sequence[int], budget_bytes: int):
        self.gm, self.batches = gm, list(batches)
        self.nodes = list(gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        readers = {n: {self.pos[u] for u in n.users} for n in self.nodes}
        for q, x in float_of.items():  # a floated edge makes q's consumers read x
            readers[x] |= readers[q]
        self.last_read = {n: max(r, default=-1) for n, r in readers.items()}
        self.frees: dict[int, list[Node]] = {}
        for n, i in self.last_read.items():
            self.frees.setdefault(i, []).append(n)
        self.attrs = {n: _fetch(gm, n.target) for n in self.nodes if n.op == "get_attr"}
        self.checkpoints = sorted({p for p in positions if 0 < p < len(self.nodes)})
        self.live_at = {p: self.live(p) for p in self.checkpoints}
        self.placeholders = {n: i for i, n in enumerate(n for n in self.nodes if n.op == "placeholder")}
        self.saved: list[dict[int, dict[Node, object]]] = [{} for _ in self.batches]
        self.seconds_at: dict[int, float] = {}  # base pass: seconds (all batches) spent before each checkpoint
        self.full_seconds = 0.0
        self.nodes_run = 0  # graph nodes executed by run(), all batches: what the checkpoints save shows here
        self._first_pass(budget_bytes)

    def live(self, p: int) -> list[Node]:
        """Values computed before position p that a node at or after p may read (state excluded)."""
        return [n for n in self.nodes[:p] if self.last_read[n] >= p and n.op != "get_attr"]

    def start_for(self, position: int) -> int:
        """The checkpoint a run that changes nothing before `position` starts from (0: the inputs)."""
        i = bisect.bisect_right(self.checkpoints, position)
        return self.checkpoints[i - 1] if i else 0

    def suffix_seconds(self, position: int, n_batches: int | None = None) -> float:
        """Estimated seconds of a run from `position` over n_batches (default: all) of the eval batches."""
        share = (n_batches or len(self.batches)) / len(self.batches)
        return share * (self.full_seconds - self.seconds_at.get(self.start_for(position), 0.0))

    def run(self, index: int, position: int, rebase: bool = False, save_to: dict | None = None):
        """The output of batch `index`, computing only from the checkpoint at or before `position`.

        rebase: the graph as it is now becomes the base; the checkpoints after the start are saved again.
        save_to: those checkpoints go to this dict instead, the base untouched (a later rebase may adopt them)."""
        start = self.start_for(position)
        env = {**self.attrs, **self.saved[index].get(start, {})}  # state is read where it is, never saved
        keep = [p for p in self.checkpoints if p > start] if rebase or save_to is not None else []
        self.nodes_run += len(self.nodes) - start
        return self._execute(index, start, env, keep, saved=save_to)

    def _execute(self, index: int, start: int, env: dict, keep: list[int], clock: Callable | None = None,
                 saved: dict | None = None):
        saved, keep = self.saved[index] if saved is None else saved, list(keep)
        for i in range(start, len(self.nodes)):
            if keep and keep[0] == i:
                saved[keep.pop(0)] = {n: env[n] for n in self.live_at[i]}
                if clock:
                    clock(i)
            node = self.nodes[i]
            if node.op == "output":
                return self.gm.graph.process_outputs(map_arg(node.args[0], env.__getitem__))
            env[node] = self._value(node, env, index)
            for dead in self.frees.get(i, ()):
                env.pop(dead, None)
        raise RuntimeError("graph has no output node")

    def _value(self, node: Node, env: dict, index: int):
        if node.op == "placeholder":
            return self._flat_inputs(index)[self.placeholders[node]]
        if node.op == "get_attr":
            return self.attrs[node]
        args, kwargs = map_arg((node.args, node.kwargs), env.__getitem__)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_module":
            return self.gm.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        raise RuntimeError(f"cannot run node op {node.op!r}")

    def _flat_inputs(self, index: int) -> list:
        b = self.batches[index]
        return fx_pytree.tree_flatten_spec((b.args, b.kwargs), self.gm._in_spec)

    def _first_pass(self, budget_bytes: int) -> None:
        """Run the base once on every batch, keeping the checkpoints that fit the budget, timed per segment."""
        every = self._thin_for(budget_bytes)
        self.checkpoints = self.checkpoints[::every] if every else []
        t0 = time.perf_counter()
        stamps: dict[int, float] = {}

        def clock(i):
            _sync(self.batches[0])
            stamps[i] = stamps.get(i, 0.0) + time.perf_counter() - t_batch

        for index in range(len(self.batches)):
            t_batch = time.perf_counter()
            self._execute(index, 0, {}, self.checkpoints, clock)
        _sync(self.batches[0])
        self.full_seconds = time.perf_counter() - t0
        self.seconds_at = stamps
        self.saved_bytes = _bytes(v for s in self.saved for cp in s.values() for v in cp.values())

    def _thin_for(self, budget_bytes: int) -> int:
        """Keep every k-th checkpoint, the smallest k whose saved values (batch 0 extrapolated) fit; 0: none."""
        if not self.checkpoints:
            return 0
        self._execute(0, 0, {}, self.checkpoints)
        sizes = {n: _bytes([v]) for cp in self.saved[0].values() for n, v in cp.items()}
        self.saved[0] = {}
        n_batches = len(self.batches)
        for every in range(1, len(self.checkpoints) + 1):
            nodes = {n for p in self.checkpoints[::every] for n in self.live_at[p]}
            if n_batches * sum(sizes.get(n, 0) for n in nodes) <= budget_bytes:
                return every
        return 0


def _fetch(gm: torch.nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _bytes(values) -> int:
    seen, total = set(), 0
    for v in values:
        for t in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
    return total


def _sync(batch: Inputs) -> None:
    t = next(iter(batch.tensors()), None)
    if t is not None and t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
