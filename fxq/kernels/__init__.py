"""Hand-written GPU kernels fxq.lower can call, each with a plain-torch reference of the same numerics."""
from fxq.kernels.fp8_attention import (EXACT_PROBS_DEFAULT, KERNEL_HEAD_DIMS, fp8_attention, fp8_attention_codes,
                            kernel_unsupported_reason)
from fxq.kernels.fp8_attention_reference import P_SCALE, fp8_attention_reference

__all__ = ["fp8_attention", "fp8_attention_codes", "fp8_attention_reference", "kernel_unsupported_reason",
           "KERNEL_HEAD_DIMS", "EXACT_PROBS_DEFAULT", "P_SCALE"]
