"""Placement: matchers that record GEMMs, attention blocks and LayerNorms once, and place() that reads them."""
