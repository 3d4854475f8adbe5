"""Calibration: observers, the calibration run, saved results, input Hessians and recorded calls."""
