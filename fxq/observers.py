"""Calibration observers: record what each activation site sees."""
from __future__ import annotations

import math

import torch

from .errors import CalibrationError


class AmaxObserver(torch.nn.Module):
    """Running max |x| kept on the tensor's device (no host sync per call).

    NaN/inf propagate into amax; check_finite() (once per batch, for all observers) refuses them.
    """

    def __init__(self, key: str):
        super().__init__()
        self.key = key
        self.register_buffer("amax", torch.zeros(()), persistent=False)
        self.batches = 0

    def _abs(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().abs().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._abs(x)
        if a.numel():
            self.amax = torch.maximum(self.amax.to(a.device), a.max())  # NaN propagates
        self.batches += 1
        return x

    def result(self) -> float:
        return float(self.amax)


class PercentileObserver(AmaxObserver):
    """amax = the given percentile of |x| over all batches, from a histogram that grows with the range."""

    def __init__(self, key: str, percentile: float, bins: int = 2048):
        super().__init__(key)
        self.percentile = percentile
        self.bins = bins
        self.hist: torch.Tensor | None = None
        self.top = 0.0  # upper edge of the histogram range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._abs(x)
        self.batches += 1
        if not a.numel():
            return x
        m = float(a.max())
        self.amax = torch.maximum(self.amax.to(a.device), a.max())
        if not math.isfinite(m):  # check_finite() reports it after this batch
            return x
        if self.hist is None or m > self.top:
            self._grow(max(m, 1e-12))
        self.hist += torch.histc(a.flatten(), bins=self.bins, min=0.0, max=self.top).to(self.hist)
        return x

    def _grow(self, top: float) -> None:
        new = torch.zeros(self.bins, dtype=torch.float64)
        if self.hist is not None:
            # Move old counts to the new bins containing their old bin centres.
            centres = (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (self.top / self.bins)
            idx = torch.clamp((centres / top * self.bins).long(), max=self.bins - 1)
            new.index_add_(0, idx, self.hist.cpu())
        self.hist, self.top = new, top

    def result(self) -> float:
        if self.hist is None or self.hist.sum() == 0:
            return 0.0
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()
        i = int(torch.searchsorted(cdf, torch.tensor(self.percentile / 100.0, dtype=torch.float64)))
        return min((i + 1) * self.top / self.bins, float(self.amax))


def make_observer(key: str, spec) -> AmaxObserver:
    if spec.calibrator == "percentile":
        return PercentileObserver(key, spec.percentile)
    return AmaxObserver(key)


def check_finite(observers, batch: int) -> None:
    """One host sync per batch: raise, naming the first quantizer that saw NaN or inf."""
    observers = list(observers)
    if not observers:
        return
    device = observers[0].amax.device
    if bool(torch.isfinite(torch.stack([o.amax.to(device) for o in observers])).all()):
        return
    bad = next(o for o in observers if not torch.isfinite(o.amax))
    raise CalibrationError(
        f"non-finite values (NaN or inf) reached quantizer '{bad.key}' during calibration batch {batch}; "
        "fix: check the calibration data (normalisation, padding) or the model in float first"
    )
