"""Save and load calibration results (amax per site key) as JSON, written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import validate
from .atomic import write_text as atomic_write_text
from .errors import CalibrationError

CALIB_VERSION = 1


def save_calibration(path, amax: dict[str, float], model_name: str, config: dict, batches: int,
                     fallback_gains: dict[str, float] | None = None) -> None:
    doc = {"version": CALIB_VERSION, "model": model_name, "batches": batches, "config": config,
           "amax": validate.amax_dict(amax, "calibration to save")}
    if config.get("fallback"):  # what fxq.Fallback left in FP16, so quantize(calibration=file) does it again
        doc["fallback"] = {"groups": list(config["fallback"]),
                           "gains": {k: float(v) for k, v in (fallback_gains or {}).items()}}
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")


def load_calibration(path) -> dict:
    doc = validate.json_file(path, "calibration file", CalibrationError,
                             "write one with save_calibration or --save-calib")
    fb = doc.get("fallback", {}) if isinstance(doc, dict) else {}
    if not isinstance(fb, dict) or not all(isinstance(g, str) for g in fb.get("groups", [])):
        raise CalibrationError(f"calibration file {path} has an invalid 'fallback' entry (want groups: [ids])")
    return validate.calibration_doc(doc, f"calibration file {path}", CALIB_VERSION)


def calibration_amax(calibration, placement) -> tuple[dict, int]:
    """(amax, batches) from a calibration file path or dict, validated the same way for both."""
    if isinstance(calibration, (str, os.PathLike)):
        doc = load_calibration(calibration)
    else:
        doc = validate.calibration_doc(calibration, "calibration= dict", CALIB_VERSION)
    amax = dict(doc["amax"])
    missing = [s.key for s in placement.sites if not s.is_weight and s.fixed_amax is None and s.key not in amax]
    if missing:
        raise CalibrationError(
            f"the calibration results lack {len(missing)} quantizers of this model/config, e.g. {missing[:3]}; "
            "fix: calibrate again with this model and config"
        )
    return amax, doc["batches"]
