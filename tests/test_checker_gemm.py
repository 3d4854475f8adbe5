"""The checker's GEMM rules (onnx_post.checker): a ready FP8 MatMul / Gemm, then one input broken at a time.

Asserts the exact reason codes and details for activations and weights, the small-GEMM skip, and a scale
dtype that differs from the graph's.
"""
from __future__ import annotations

import numpy as np
import pytest

from checker_graphs import F32, Builder, gemm_model
from onnx_post.checker import check_model


def test_ready_gemm():
    rep = check_model(gemm_model())
    (row,) = rep.gemms
    assert (row.ready, row.reasons, row.k, row.n, row.skipped) == (True, [], 64, 32, False)
    assert rep.ready and rep.casts == 0 and rep.graph_dtype == "float16"
    assert rep.summary() == ("GEMMs: 1/1 ready (both inputs DQ) | attention: 0/0 ready | convs: 0/0 ready (input and weight DQ) | "
                             "Casts: 0 | graph dtype: float16")


@pytest.mark.parametrize("break_, reasons, detail", [
    ("a_cast", ["input_a_not_dq"], "a: from Cast"),
    ("a_int8", ["not_fp8"], "a: DQ of int8"),
    ("a_zero_point", ["zero_point_nonzero"], "a: zero point nonzero"),
    ("a_per_channel", ["activation_not_per_tensor"], "a: scale shape [64]"),
    ("b_float", ["input_b_not_dq"], "b: from float16 initializer"),
    ("b_runtime_q", ["weight_not_fp8_initializer"], "b: weight from QuantizeLinear"),
    ("b_int8", ["not_fp8", "weight_not_fp8_initializer"], "b: DQ of int8"),
    ("b_per_channel", [], ""),
    ("small_n", ["small_gemm"], ""),
])
def test_gemm_reasons(break_, reasons, detail):
    rep = check_model(gemm_model(break_))
    (row,) = rep.gemms
    assert row.reasons == reasons
    assert row.ready == (not reasons)
    assert detail in row.detail
    assert rep.casts == (1 if break_ == "a_cast" else 0)


def test_small_gemm_is_skipped_by_design():
    rep = check_model(gemm_model("small_n"))
    (row,) = rep.gemms
    assert (row.ready, row.skipped, row.n) == (False, True, 8)
    assert rep.ready  # skipped GEMMs do not count against the model
    assert "0/1 ready (both inputs DQ), 1 skipped (K or N < 16, or GEMV)" in rep.summary()


def test_scale_dtype_mismatch_against_graph_dtype():
    # Two FP16 GEMMs make the graph FP16; a third GEMM quantized with FP32 scales is flagged.
    b = Builder()
    ys = [b.op("MatMul", [b.qdq(b.input(f"x{i}", [4, 64])), b.fp8_weight((64, 32))])
          for i in range(2)]
    x32 = b.input("x32", [4, 64], F32)
    ys.append(b.op("MatMul", [b.qdq(x32, sdtype=np.float32), b.fp8_weight((64, 32), np.float32)]))
    rep = check_model(b.model(*ys))
    assert rep.graph_dtype == "float16"
    assert [r.reasons for r in rep.gemms] == [[], [], ["scale_dtype_mismatch"]]
    assert "a: scale float32, graph float16" in rep.gemms[2].detail


def test_gemm_op_with_trans_b():
    b = Builder()
    w = b.fp8_weight((32, 64))  # (N, K), transB=1
    rep = check_model(b.model(b.op("Gemm", [b.qdq(b.input("x", [4, 64])), w], transB=1)))
    (row,) = rep.gemms
    assert (row.ready, row.k, row.n) == (True, 64, 32)
