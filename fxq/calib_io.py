"""Save and load calibration results (amax per site key) as JSON, written atomically."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .errors import CalibrationError

CALIB_VERSION = 1


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_calibration(path, amax: dict[str, float], model_name: str, config: dict, batches: int,
                     fallback_gains: dict[str, float] | None = None) -> None:
    doc = {"version": CALIB_VERSION, "model": model_name, "batches": batches, "config": config,
           "amax": {k: float(v) for k, v in amax.items()}}
    if config.get("fallback"):  # what fxq.Fallback left in FP16, so quantize(calibration=file) does it again
        doc["fallback"] = {"groups": list(config["fallback"]),
                           "gains": {k: float(v) for k, v in (fallback_gains or {}).items()}}
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")


def load_calibration(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist; fix: write one with save_calibration or --save-calib")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CalibrationError(f"calibration file {path} is not valid JSON ({e}); fix: re-run calibration") from None
    if not isinstance(doc, dict) or doc.get("version") != CALIB_VERSION or not isinstance(doc.get("amax"), dict):
        raise CalibrationError(f"calibration file {path} is not an fxq v{CALIB_VERSION} calibration file")
    bad = [k for k, v in doc["amax"].items() if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0]
    if bad:
        raise CalibrationError(f"calibration file {path} has invalid amax values for {bad[:3]}")
    fb = doc.get("fallback", {})
    if not isinstance(fb, dict) or not all(isinstance(g, str) for g in fb.get("groups", [])):
        raise CalibrationError(f"calibration file {path} has an invalid 'fallback' entry (want groups: [ids])")
    return doc
