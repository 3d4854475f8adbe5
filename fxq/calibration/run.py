"""Calibrate: run sample batches through the observed graph and collect amax per site."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from tqdm.auto import tqdm

from fxq.capture.program import Inputs
from fxq.errors import CalibrationError
from fxq.calibration.observers import AmaxObserver, check_finite, warn_dominant_batches


def _structure(inputs: Inputs) -> tuple:
    return len(inputs.args), tuple(sorted(inputs.kwargs))


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module without state)."""
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def run_calibration(
    gm: torch.nn.Module,
    observers: Mapping[str, AmaxObserver],
    data: Iterable,
    example: Inputs,
    progress: bool = True,
) -> int:
    """Feed every batch of `data` to `gm`, in one pass (a generator is read once). Returns the number of batches seen."""
    if isinstance(data, (torch.Tensor, dict)) or hasattr(data, "keys"):
        data = [data]  # one batch given directly
    try:
        iterator = iter(data)
    except TypeError:
        raise CalibrationError(
            f"calibration data must be an iterable of batches (tensors, tuples or dicts), got {type(data).__name__}"
        ) from None
    device = device_of(gm)
    expected = _structure(example)
    seen = 0
    total = len(data) if hasattr(data, "__len__") else None
    with torch.no_grad():
        for batch in tqdm(iterator, total=total, desc="fxq calibrate", unit="batch", disable=not progress):
            seen += 1
            try:
                inputs = Inputs.of(batch)
            except TypeError as e:
                raise CalibrationError(f"calibration batch {seen}: {e}") from None
            _refuse_empty(inputs, seen)
            if _structure(inputs) != expected:
                raise CalibrationError(
                    f"calibration batch {seen} has {_describe(inputs)} but the example inputs have "
                    f"{_describe(example)}; fix: give calibration batches the same structure as example_inputs"
                )
            inputs = inputs.map(lambda t: t.to(device))
            try:
                inputs.call(gm)
            except Exception as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CalibrationError(
                    f"calibration batch {seen} failed in the captured model: {msg}; fix: give batches the "
                    "example inputs' shapes (other batch sizes need dynamic_batch=True)"
                ) from e
            check_finite(observers.values(), seen)
    if seen == 0:
        once = " (a generator or iterator yields its batches once: was it used up already?)" if iterator is data else ""
        raise CalibrationError(f"calibration data is empty{once}; fix: pass at least one batch (a few hundred "
                               "samples is typical)")
    warn_dominant_batches(observers.values())
    return seen


def _refuse_empty(inputs: Inputs, batch: int) -> None:
    """A zero-size tensor would "calibrate" its sites to amax 0."""
    named = [(f"positional input {i}", a) for i, a in enumerate(inputs.args)]
    named += [(f"input {str(k)[:80]!r}", v) for k, v in inputs.kwargs.items()]
    for name, t in named:
        if isinstance(t, torch.Tensor) and t.numel() == 0:
            raise CalibrationError(f"calibration batch {batch}: {name} is empty (shape {tuple(t.shape)}); fix: "
                                   "drop empty batches from the calibration data")


def _describe(inputs: Inputs) -> str:
    parts = []
    if inputs.args:
        parts.append(f"{len(inputs.args)} positional input(s)")
    if inputs.kwargs:
        parts.append(f"keyword inputs {sorted(inputs.kwargs)}")
    return " and ".join(parts) or "no inputs"
