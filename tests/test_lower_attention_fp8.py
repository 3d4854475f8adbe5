"""fxq.lower(attention="fp8" | "fp16" | "auto"): the choice per block, `.stats`, fallbacks and numerics, on CPU.

On a CPU the FP8 attention op runs its plain-torch reference (the ONNX graph's semantics: q, k, v and P
in E4M3), so the lowered model follows the fake-quant model more closely than SDPA in FP16 does.
"""
import sys

import hf_models
import pytest
import tiny_models as T
import torch
import torch.nn.functional as F

import fxq
import fxq.lower.driver  # noqa: F401

L = sys.modules["fxq.lower.driver"]
aten = torch.ops.aten
CPU = "reference: inputs on cpu, the FP8 attention kernel needs a CUDA GPU"


def cosine(a, b) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def quantize_tiny(spelling, heads):
    model = T.TinyAttention(spelling, heads=heads).eval()
    return fxq.quantize(model, T.inputs_for(spelling), [T.inputs_for(spelling) for _ in range(2)], progress=False)


def ops_in(low, target) -> int:
    return len(low.graph_module.graph.find_nodes(op="call_function", target=target))


@pytest.mark.parametrize("spelling", ["mul_after", "additive_mask", "bool_mask", "fp32_softmax", "sdpa_causal"])
def test_fp8_attention_follows_fake_quant_closer_than_fp16(spelling):
    qm = quantize_tiny(spelling, heads=1)  # head dim 64: the kernel's, so on CPU the reason is the device
    x = T.inputs_for(spelling)
    ref = qm(*x)
    fp8, fp16 = fxq.lower(qm, attention="fp8"), fxq.lower(qm, attention="fp16")
    assert fp8.stats.attention_choices == (("", "fp8", CPU),) and fp8.stats.attention_fp8 == 1
    assert ops_in(fp8, L.FP8_ATTENTION) == 1 and ops_in(fp8, aten.scaled_dot_product_attention.default) == 0
    assert ops_in(fp8, L.quantize_fp8) == 4 + 2  # 4 GEMM inputs, q and k (v goes through quantize_values)
    assert ops_in(fp8, L.quantize_values) == 1
    assert fp16.stats.attention_choices == (("", "fp16", "attention='fp16'"),) and fp16.stats.attention_fp8 == 0
    with torch.no_grad():
        err8, err16 = 1 - cosine(fp8(*x), ref), 1 - cosine(fp16(*x), ref)
    # measured 1-cos: fp8 1.1e-5 to 3.1e-5, fp16 4.9e-5 to 6.4e-5 (q, k, v and P quantized as the graph does)
    assert err8 < 0.7 * err16 and err8 < 5e-5


def test_unsupported_head_dim_falls_back_to_the_reference_with_the_reason():
    qm = quantize_tiny("mul_after", heads=4)  # head dim 16
    low = fxq.lower(qm, attention="fp8")
    reason = "reference: head dim 16 (the kernel has (64, 128))"
    assert low.stats.attention_choices == (("", "fp8", reason),)
    assert low.stats.attention_counts() == {("fp8", reason): 1}
    x = T.inputs_for("mul_after")
    assert cosine(low(*x), qm(*x)) > 0.9999


def test_auto_picks_fp16_on_cpu_and_says_why():
    qm = quantize_tiny("mul_after", heads=1)
    low = fxq.lower(qm, attention="auto")
    assert low.stats.attention_choices == (("", "fp16", "auto: " + CPU.removeprefix("reference: ")),)
    assert ops_in(low, aten.scaled_dot_product_attention.default) == 1 and low.stats.attention_fp8 == 0


def test_hf_bert_padding_masks_on_fp8_attention_in_both_dtypes():
    model = hf_models.small_bert()
    x = hf_models.bert_inputs()
    qm = fxq.quantize(model, x, [hf_models.bert_inputs() for _ in range(2)], progress=False)
    ref = qm(**x).to_tuple()[0]
    for dtype in (torch.float16, torch.bfloat16):
        low = fxq.lower(qm, dtype, attention="fp8")
        assert low.stats.attention_fp8 == low.stats.attention_fused == 2
        out = low(**x).to_tuple()[0]
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert cosine(out, ref) > 0.9999  # measured 0.9999996 (fp16), 0.999985 (bf16)


def test_bad_attention_values_get_one_clear_error():
    qm = quantize_tiny("mul_after", heads=1)
    for bad in ("fp4", "FP8", 1, None):
        with pytest.raises(fxq.LowerError, match=r"attention=.* is not a mode; fix: pass attention='fp16'"):
            fxq.lower(qm, attention=bad)
    with pytest.raises(fxq.LowerError, match="keep_qkv_qdq=True applies to attention='fp16' only"):
        fxq.lower(qm, attention="fp8", keep_qkv_qdq=True)
    assert fxq.lower(qm, attention=True).stats.attention_choices[0][1] == "fp16"  # True: today's SDPA re-fusion
