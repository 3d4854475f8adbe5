"""Accuracy tools: sensitivity, budgeted fallback, weight rounding, key centering, per-call error."""
