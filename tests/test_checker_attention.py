"""The checker's attention rules (onnx_post.checker): an FP8 MHA block as TensorRT wants it, then one thing broken.

Asserts the exact reason codes for the Q/K/V and softmax quantizers, the softmax scale, scaling after
BMM1, casts, the output quantizer, and the head size and sequence length TensorRT's fused kernel needs.
"""
from __future__ import annotations

import pytest

from checker_graphs import attention_model
from onnx_post.checker import check_model


def test_ready_attention_block():
    rep = check_model(attention_model())
    (blk,) = rep.attention
    assert (blk.ready, blk.reasons, blk.head_size) == (True, [], 32)
    assert [(g.ready, g.k, g.n) for g in rep.gemms] == [(True, 32, 16), (True, 16, 32),
                                                         (True, 128, 64)]
    assert rep.ready
    assert rep.summary() == ("GEMMs: 3/3 ready (both inputs DQ) | attention: 1/1 ready | convs: 0/0 ready (input and weight DQ) | "
                             "Casts: 0 | graph dtype: float16")


@pytest.mark.parametrize("break_, reasons", [
    ("q", ["q_not_fp8"]),
    ("k", ["k_not_fp8"]),
    ("v", ["v_not_fp8"]),
    ("softmax_q", ["softmax_not_quantized"]),
    ("softmax_scale", ["softmax_scale_not_1_448"]),
    ("scale_after", ["scale_after_bmm1"]),
    ("div_after", ["scale_after_bmm1"]),
    ("cast", ["cast_in_block"]),
    ("fp32_softmax", ["cast_in_block", "softmax_not_quantized"]),
    ("output", ["output_not_quantized"]),
])
def test_attention_reasons(break_, reasons):
    rep = check_model(attention_model(break_))
    (blk,) = rep.attention
    assert blk.reasons == reasons
    assert not blk.ready and not rep.ready


@pytest.mark.parametrize("head", [8, 20, 264])
def test_head_size_out_of_window(head):
    (blk,) = check_model(attention_model(head=head)).attention
    assert (blk.reasons, blk.head_size) == (["head_size_out_of_window"], head)


def test_dynamic_seq_len():
    (blk,) = check_model(attention_model(seq="T")).attention
    assert blk.reasons == ["dynamic_seq_len"]
    assert "'T'" in blk.detail


def test_head_size_unknown_without_shapes():
    (blk,) = check_model(attention_model(shapes=False)).attention
    assert (blk.reasons, blk.head_size) == (["head_size_unknown", "dynamic_seq_len"], None)  # seq unknown too


def test_softmax_scale_detail():
    (blk,) = check_model(attention_model("softmax_scale")).attention
    assert "probs scale 0.00390625, want 1/448 = 0.00223214" in blk.detail
