"""Calibration observers: record what each activation site sees."""
from __future__ import annotations

import math
import warnings

import torch

from fxq.errors import CalibrationError


class AmaxObserver(torch.nn.Module):
    """Running max |x| kept on the tensor's device (no host sync per call).

    NaN/inf propagate into amax; check_finite() (once per batch, for all observers) refuses them.
    Each call's max is kept too (one scalar per batch), for warn_dominant_batches().
    """

    def __init__(self, key: str):
        super().__init__()
        self.key = key
        self.register_buffer("amax", torch.zeros(()), persistent=False)
        self.batches = 0
        self.batch_max: list[torch.Tensor] = []

    def _abs(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().abs().float()
        self.batch_max.append(a.max() if a.numel() else torch.zeros((), device=a.device))
        self.batches += 1
        return a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._abs(x)
        if a.numel():
            self.amax = torch.maximum(self.amax.to(a.device), a.max())  # NaN propagates
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


DOMINANCE = 1e3  # one batch's max this many times all the others' max: "orders of magnitude"


def warn_dominant_batches(observers) -> list[str]:
    """Warn, naming the tensor and the batch, where one calibration batch alone set amax by orders of magnitude.

    A warning rather than an error: a real rare activation (an outlier feature a few tokens show) is
    legitimate data, and refusing it would block calibrating such models; but a corrupt or unnormalised
    batch looks the same, and its amax flushes every other value of that tensor to zero in FP8, so the
    user must hear of it. Returns the quantizer keys warned about.
    """
    found = []
    for o in observers:
        if len(o.batch_max) < 2:
            continue
        maxima = torch.stack([m.to(o.batch_max[0].device) for m in o.batch_max]).double()
        top = int(torch.argmax(maxima))
        rest = float(torch.cat([maxima[:top], maxima[top + 1:]]).max())
        if rest > 0 and float(maxima[top]) >= DOMINANCE * rest:
            found.append((o.key, top + 1, float(maxima[top]), rest, len(o.batch_max) - 1))
    if found:
        key, batch, top, rest, others = found[0]
        more = f" (and {len(found) - 1} more tensors)" if len(found) > 1 else ""
        warnings.warn(f"calibration batch {batch} alone sets the amax of '{key}' to {top:.3g}, {top / rest:.3g}x the "
                      f"largest of the other {others} batches ({rest:.3g}){more}: in FP8 the rest of that tensor "
                      "flushes to zero; fix: check that batch (outliers, normalisation, padding) or use "
                      "calibrator='percentile'", UserWarning, stacklevel=3)
    return [f[0] for f in found]
