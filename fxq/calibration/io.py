"""Calibration results (amax per site key, and the fallback that was chosen): loaded and validated once.

A `Calibration` is what fxq.quantize reads from `calibration=` (a file or its dict), what the
budgeted fallback adds its choices to, and what QuantizedModel.save_calibration writes (atomically).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from fxq import validate
from fxq.atomic import write_text as atomic_write_text
from fxq.errors import CalibrationError

CALIB_VERSION = 1
_FIX = "write one with save_calibration or --save-calib"


@dataclass(frozen=True)
class Calibration:
    """amax per quantizer key (activations from calibration, weights from the weights), and the
    fallback groups (with their measured gains) a saved file applies again."""

    amax: dict[str, float]
    batches: int
    fallback_groups: tuple[str, ...] = ()
    fallback_gains: dict[str, float] = field(default_factory=dict)
    model: str = ""
    config: dict | None = None  # the QuantConfig.to_dict() it was calibrated with (informative)

    @classmethod
    def load(cls, source: "str | os.PathLike | Mapping | Calibration") -> "Calibration":
        """From a saved file's path or its loaded dict, validated the same way for both."""
        if isinstance(source, Calibration):
            return source
        if isinstance(source, (str, os.PathLike)):
            where = f"calibration file {source}"
            doc = validate.json_file(source, "calibration file", CalibrationError, _FIX)
        else:
            where = "calibration= dict"
            doc = source
        doc = validate.calibration_doc(doc, where, CALIB_VERSION)
        groups, gains = _fallback_entry(doc.get("fallback"), where)
        model, config = doc.get("model", ""), doc.get("config")
        if not isinstance(model, str) or not (config is None or isinstance(config, Mapping)):
            raise CalibrationError(f"{where}: 'model' must be a string and 'config' an object; fix: {_FIX}")
        return cls(dict(doc["amax"]), doc["batches"], groups, gains, model, None if config is None else dict(config))

    def to_dict(self) -> dict:
        doc = {"version": CALIB_VERSION, "model": self.model, "batches": self.batches, "config": self.config or {},
               "amax": validate.amax_dict(self.amax, "calibration to save")}
        if self.fallback_groups:  # what fxq.Fallback left in FP16, so quantize(calibration=file) does it again
            doc["fallback"] = {"groups": list(self.fallback_groups),
                               "gains": {k: float(v) for k, v in self.fallback_gains.items()}}
        return doc

    def save(self, path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n")

    def amax_for(self, placement) -> dict[str, float]:
        """A copy of amax, checked to hold every calibrated activation site of `placement`."""
        missing = [s.key for s in placement.sites if not s.is_weight and s.fixed_amax is None and s.key not in self.amax]
        if missing:
            raise CalibrationError(
                f"the calibration results lack {len(missing)} quantizers of this model/config, e.g. {missing[:3]}; "
                "fix: calibrate again with this model and config"
            )
        return dict(self.amax)


def _fallback_entry(entry: Any, where: str) -> tuple[tuple[str, ...], dict[str, float]]:
    entry = {} if entry is None else entry
    groups = entry.get("groups", []) if isinstance(entry, Mapping) else None
    gains = entry.get("gains", {}) if isinstance(entry, Mapping) else None
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups) or not isinstance(gains, Mapping):
        raise CalibrationError(f"{where} has an invalid 'fallback' entry (want groups: [ids], gains: {{id: number}}); "
                               f"fix: {_FIX}")
    bad = [k for k, v in gains.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise CalibrationError(f"{where}: fallback gain of {str(bad[0])[:80]!r} is not a finite number; fix: {_FIX}")
    return tuple(groups), {str(k): float(v) for k, v in gains.items()}


def load_calibration(path) -> dict:
    """A calibration file as its validated document (the dict form of Calibration.load(path))."""
    return Calibration.load(path).to_dict()


def save_calibration(path, amax: dict[str, float], model_name: str, config: dict, batches: int,
                     fallback_gains: dict[str, float] | None = None) -> None:
    """Write a calibration file (the fallback groups are config["fallback"])."""
    Calibration(amax, batches, tuple(config.get("fallback") or ()), dict(fallback_gains or {}), model_name,
                config).save(path)
