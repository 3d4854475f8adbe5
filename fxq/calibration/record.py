"""Record a module's calls while the user's own code runs: calibration data as the model is really used.

A diffusion pipeline calls its transformer once per denoising step, with positional and keyword
arguments, and activation ranges move across timesteps. `record_inputs` hooks the module's forward,
keeps each call's arguments (detached, optionally moved to another device), and hands them back in
the form `fxq.quantize` takes for `calib_data`:

    with fxq.record_inputs(pipe.transformer, max_batches=64) as rec:
        pipe(prompts, num_inference_steps=28)
    qm = fxq.quantize(pipe.transformer, rec.example, rec.batches)

The sub-sampling rule, when there are more calls than `max_batches`: calls are kept at a stride that
starts at 1 and doubles whenever 2 * max_batches calls are held (every other kept call is dropped),
so what is held is always every stride-th call of the run so far; at the end, `max_batches` of them
are picked evenly (first and last included). Every part of the run, every timestep range, is covered
at the same density, and memory never holds more than 2 * max_batches calls.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from fxq.capture.program import Inputs


def _detach(value: Any, device: torch.device | None) -> Any:
    """Tensors detached (and moved, when asked); containers walked; other values kept as they are."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        return t.to(device) if device is not None else t
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v, device) for k, v in value.items()}
    return value


def _spread(n: int, k: int) -> list[int]:
    """k indices out of range(n), evenly spaced, first and last included."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


@dataclass
class Recording:
    """What `record_inputs` saw: `batches` (a list of fxq `Inputs`, one per kept call), `calls` (all calls)."""

    max_batches: int | None
    device: torch.device | None
    calls: int = 0
    stride: int = 1
    _kept: list[tuple[int, Inputs]] = field(default_factory=list)

    def add(self, args: tuple, kwargs: dict) -> None:
        index = self.calls
        self.calls += 1
        if index % self.stride:
            return
        self._kept.append((index, Inputs(_detach(tuple(args), self.device), _detach(dict(kwargs), self.device))))
        if self.max_batches is not None and len(self._kept) >= 2 * self.max_batches:
            self.stride *= 2  # keep every other: what stays is every (2 * stride)-th call
            self._kept = [(i, b) for i, b in self._kept if i % self.stride == 0]

    @property
    def indices(self) -> list[int]:
        """The call numbers (0-based, in call order) of the batches kept."""
        kept = self._kept if self.max_batches is None else [self._kept[i] for i in _spread(len(self._kept), self.max_batches)]
        return [i for i, _ in kept]

    @property
    def batches(self) -> list[Inputs]:
        """The kept calls, in call order, as fxq.quantize's calib_data (each an Inputs: args and kwargs)."""
        keep = set(self.indices)
        return [b for i, b in self._kept if i in keep]

    @property
    def example(self) -> Inputs:
        """The first call: example inputs for fxq.quantize."""
        if not self._kept:
            raise ValueError("record_inputs saw no call of the module; fix: run the code that calls it inside "
                             "the `with` block (e.g. the pipeline), and check that it calls this very module")
        return self._kept[0][1]


@contextlib.contextmanager
def record_inputs(module: torch.nn.Module, max_batches: int | None = None, device: str | torch.device | None = None):
    """Record every call of `module` made inside the `with` block.

    max_batches: keep at most this many calls, evenly spread over the run (see the module docstring);
        None keeps every call.
    device: move recorded tensors there (e.g. "cpu" when GPU memory is short); None keeps them where they are.
    Yields a Recording: `.batches` (calib_data for fxq.quantize), `.example`, `.calls`, `.indices`.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"record_inputs records calls of a torch.nn.Module, got {type(module).__name__}")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive whole number or None, got {max_batches!r}")
    rec = Recording(max_batches, torch.device(device) if device is not None else None)
    handle = module.register_forward_pre_hook(lambda _m, args, kwargs: rec.add(args, kwargs), with_kwargs=True)
    try:
        yield rec
    finally:
        handle.remove()
