"""Conversion: the FP8 ops and the edits that put Q/DQ and FP8 weights into the program, and dtype conversion."""
