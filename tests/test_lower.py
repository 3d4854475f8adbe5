"""fxq.lower: FP8 _scaled_mm GEMMs, SDPA re-fusion, fusable Q/DQ and the fp16/bf16 graph, on CPU.

torch._scaled_mm and fp16 LayerNorm/GELU/SDPA all run on CPU, so every check here uses real kernels.
"""
import sys

import hf_models
import pytest
import tiny_models as T
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Graph, GraphModule
from torch.utils._python_dispatch import TorchDispatchMode

import fxq
import fxq.lower.driver  # noqa: F401  (loads the module; the attribute fxq.lower is the function)
from fxq.graph_utils import attr_value

L = sys.modules["fxq.lower.driver"]
aten = torch.ops.aten
QDQ = torch.ops.fxq.fp8_qdq.default


class OpCount(TorchDispatchMode):
    """Counts the ATen ops a forward actually runs."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] = self.counts.get(func, 0) + 1
        return func(*args, **(kwargs or {}))


def run_counted(module, *args, **kwargs):
    with torch.no_grad(), OpCount() as c:
        out = module(*args, **kwargs)
    return out, c.counts


def cosine(a, b) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def first(out):
    """The main output tensor of a module (HF ModelOutput, tuple or tensor)."""
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    return out[0] if isinstance(out, (tuple, list)) else out


def sdpa_nodes(low):
    return list(low.graph_module.graph.find_nodes(op="call_function", target=aten.scaled_dot_product_attention.default))


def quantized_gemms(qm) -> int:
    """GEMMs whose input and weight both carry an FP8 site (one linear.weight site per such GEMM)."""
    return qm.placement.count(fxq.roles.LINEAR_WEIGHT)


def quantize_tiny(spelling, **kw):
    model = T.TinyAttention(spelling).eval()
    calib = [T.inputs_for(spelling) for _ in range(2)]
    return fxq.quantize(model, T.inputs_for(spelling), calib, progress=False, **kw)


@pytest.mark.parametrize("spelling", ["mul_after", "no_scale", "additive_mask", "bool_mask", "fp32_softmax",
                                      "sdpa_causal"])
def test_tiny_attention_runs_on_scaled_mm_and_sdpa(spelling):
    qm = quantize_tiny(spelling)
    low = fxq.lower(qm)
    x = T.inputs_for(spelling)
    out, counts = run_counted(low, *x)

    assert quantized_gemms(qm) == 6
    assert low.stats.gemms_fp8 == 6 and low.stats.gemms_float == 0
    assert counts.get(aten._scaled_mm.default, 0) == 6  # one real FP8 GEMM per quantized GEMM, per forward
    assert counts.get(aten.matmul.default, 0) == counts.get(aten.bmm.default, 0) == 0  # no float BMM1/BMM2 left
    assert low.stats.attention_fused == 1 and low.stats.attention_kept == 0
    assert not low.graph_module.graph.find_nodes(op="call_function", target=QDQ)
    (attn,) = sdpa_nodes(low)
    assert (attn.kwargs["attn_mask"] is not None) == (spelling in {"additive_mask", "bool_mask", "fp32_softmax",
                                                                  "sdpa_causal"})  # real masks are kept
    assert out.dtype == torch.float16
    assert cosine(out, qm(*x)) > 0.999


@pytest.mark.parametrize("attention", ["fp16", "fp8"])
def test_real_mask_changes_the_output(attention):
    """Dropping a real mask would be caught: the same model with the mask zeroed differs (SDPA and the FP8 op)."""
    qm = quantize_tiny("additive_mask")
    low = fxq.lower(qm, attention=attention)
    x, mask = T.inputs_for("additive_mask")
    with torch.no_grad():
        masked, unmasked = low(x, mask), low(x, torch.zeros_like(mask))
        assert cosine(masked, qm(x, mask)) > 0.999
        assert cosine(masked, unmasked) < 0.999


def test_shared_layer_norm_quantizer_is_computed_once():
    qm = quantize_tiny("mul_after")
    low = fxq.lower(qm)
    # LN1 -> q, k, v (one quantizer for three GEMMs), attention output -> o, LN2 -> fc1, GELU -> fc2.
    assert low.stats.activation_quantizers == 4
    quantizers = low.graph_module.graph.find_nodes(op="call_function", target=L.quantize_fp8)
    assert len(quantizers) == 4
    assert sorted(len(q.users) for q in quantizers) == [1, 1, 1, 3]
    assert all(u.target is L.fp8_linear for q in quantizers for u in q.users)


def test_keep_qkv_qdq_keeps_fake_quant_in_front_of_sdpa():
    qm = quantize_tiny("mul_after")
    x = T.inputs_for("mul_after")
    low = fxq.lower(qm, keep_qkv_qdq=True)
    assert low.stats.attention_fp8_qkv == 1 and low.stats.qdq_decomposed == 3
    (attn,) = sdpa_nodes(low)
    q, k_t, v = attn.args[0], attn.args[1].args[0], attn.args[2]
    assert q.target is k_t.target is v.target is L.fake_quant
    assert fxq.lower(qm).stats.qdq_decomposed == 0  # the default drops them (attention in FP16)
    assert cosine(first(low(*x)), qm(*x)) > 0.999


def test_attention_false_keeps_every_qdq_as_fusable_ops():
    qm = quantize_tiny("mul_after")
    x = T.inputs_for("mul_after")
    low = fxq.lower(qm, attention=False)
    assert low.stats.attention_fused == 0 and low.stats.attention_kept == 1
    assert low.stats.qdq_decomposed == 4  # q, k, v, probs
    _, counts = run_counted(low, *x)
    assert counts.get(aten._scaled_mm.default, 0) == 6
    assert cosine(low(*x), qm(*x)) > 0.999


def test_gemms_off_the_multiple_of_16_stay_in_float():
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 32)).eval()
    x = torch.randn(4, 32)
    qm = fxq.quantize(model, x, [torch.randn(4, 32) for _ in range(2)], progress=False)
    assert quantized_gemms(qm) == 3  # placement quantizes all three (K, N >= 16) ...
    low = fxq.lower(qm)
    out, counts = run_counted(low, x)
    assert low.stats.gemms_fp8 == 1 and low.stats.gemms_float == 2  # ... N=40 and K=40 cannot use _scaled_mm
    assert counts.get(aten._scaled_mm.default, 0) == 1
    assert low.stats.qdq_decomposed == 4  # their input and weight Q/DQ became plain ops
    assert not low.graph_module.graph.find_nodes(op="call_function", target=QDQ)
    assert cosine(out, qm(x)) > 0.999


def test_hf_vit_zero_masks_dropped_and_bf16():
    model = hf_models.vit(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          image_size=32, patch_size=8)
    x = hf_models.vit_inputs(2, 32)
    qm = fxq.quantize(model, x, [hf_models.vit_inputs(2, 32) for _ in range(2)], progress=False)
    ref = first(qm(**x))
    for dtype in (torch.float16, torch.bfloat16):
        low = fxq.lower(qm, dtype)
        out, counts = run_counted(low, **x)
        assert low.stats.attention_fused == 2 and low.stats.zero_masks_dropped == 2
        assert all(n.kwargs["attn_mask"] is None for n in sdpa_nodes(low))  # transformers' all-zero mask is gone
        # The classifier reads the CLS token only: placement leaves that GEMV in float (reason gemv).
        assert counts.get(aten._scaled_mm.default, 0) == low.stats.gemms_fp8 == quantized_gemms(qm) == 12
        assert first(out).dtype == dtype
        assert cosine(first(out), ref) > (0.995 if dtype is torch.float16 else 0.99)


def test_hf_bert_real_padding_mask_kept_and_finite_in_fp16():
    model = hf_models.small_bert()
    x = hf_models.bert_inputs()
    qm = fxq.quantize(model, x, [hf_models.bert_inputs() for _ in range(2)], progress=False)
    low = fxq.lower(qm)
    out, counts = run_counted(low, **x)
    assert low.stats.attention_fused == 2 and low.stats.zero_masks_dropped == 0
    assert all(n.kwargs["attn_mask"] is not None for n in sdpa_nodes(low))
    assert low.stats.literals_cast > 0  # the finfo(float32).min mask constant and float32 casts
    assert counts.get(aten._scaled_mm.default, 0) == quantized_gemms(qm) == low.stats.gemms_fp8
    h = first(out)
    assert torch.isfinite(h).all()
    assert cosine(h, first(qm(**x))) > 0.999


def test_lowered_model_keeps_dynamic_batch_and_leaves_qm_alone():
    qm = quantize_tiny("mul_after")
    x = T.inputs_for("mul_after", batch=3)
    before = qm(*x)
    n_qdq = len(qm.graph_module.graph.find_nodes(op="call_function", target=QDQ))
    low = fxq.lower(qm)
    for batch in (1, 3, 5):
        xb = T.inputs_for("mul_after", batch=batch)
        assert low(*xb).shape == (batch, T.SEQ, T.DIM)
    assert len(qm.graph_module.graph.find_nodes(op="call_function", target=QDQ)) == n_qdq
    assert torch.equal(qm(*x), before)
    assert {t.dtype for t in qm.graph_module.state_dict().values()} == {torch.float32, torch.float8_e4m3fn}


def test_weight_fp8_takes_the_programs_fp8_codes_as_they_are():
    qm = quantize_tiny("mul_after")
    gm = qm.graph_module
    dq = next(n for n in gm.graph.find_nodes(op="call_function", target=L.DEQUANT) if n.args[0].op == "get_attr")
    codes, scale = L.weight_fp8(gm, dq, torch.float16)
    stored = attr_value(gm, dq.args[0].target)
    assert codes.dtype == torch.float8_e4m3fn and torch.equal(codes.view(torch.uint8), stored.view(torch.uint8))
    assert scale == dq.args[1]
    assert L.weight_fp8(gm, dq.args[0], torch.float16) is None  # the buffer itself is not a quantizer


def test_cast_literals_follows_the_captured_dtype_rule_and_clamps_mask_sentinels():
    g = Graph()
    x = g.placeholder("x")
    up = g.call_function(aten.to.dtype, (x, torch.float32))
    neg = g.call_function(aten.lt.Scalar, (up, 0))
    masked = g.call_function(aten.masked_fill.Scalar, (up, neg, torch.finfo(torch.float32).min))
    zeros = g.call_function(aten.full.default, ([1], 0.0), {"dtype": torch.float32})
    out = g.call_function(aten.add.Tensor, (masked, zeros))
    g.output(out)
    gm = GraphModule(nn.Module(), g)
    # An fp32 capture: its fp32 literals are the model's own dtype and become fp16.
    assert L.cast_literals(gm, torch.float16, torch.float32) == 3
    assert up.args[1] is torch.float16 and zeros.kwargs["dtype"] is torch.float16
    assert masked.args[2] == -torch.finfo(torch.float16).max  # a sentinel keeps its meaning in range
    y = gm(torch.tensor([0.0, 1.0, -1.0], dtype=torch.float16))
    assert y.dtype == torch.float16 and torch.isfinite(y).all()  # 0 * -inf would be NaN
    assert L.cast_literals(gm, torch.float16, torch.float32) == 0  # nothing left to convert
    # A BF16 capture: float32 and float64 literals are deliberate upcasts and stay; bf16 ones become fp16.
    g2 = Graph()
    x = g2.placeholder("x")
    up32 = g2.call_function(aten.to.dtype, (x, torch.float32))
    up64 = g2.call_function(aten.to.dtype, (up32, torch.float64))
    down = g2.call_function(aten.to.dtype, (up64, torch.bfloat16))
    g2.output(down)
    gm2 = GraphModule(nn.Module(), g2)
    assert L.cast_literals(gm2, torch.float16, torch.bfloat16) == 1
    assert (up32.args[1], up64.args[1], down.args[1]) == (torch.float32, torch.float64, torch.float16)


def test_literal_beyond_the_lowered_dtype_is_refused_not_clamped():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 32)

        def forward(self, x):
            return self.fc(x) * 1e6

    x = torch.randn(4, 32)
    qm = fxq.quantize(Scaled(), x, [x], progress=False)
    with pytest.raises(fxq.errors.InputError, match=r"constant 1e\+06 in mul .*does not fit torch.float16"):
        fxq.lower(qm, torch.float16)
    assert cosine(fxq.lower(qm, torch.bfloat16)(x), qm(x)) > 0.999  # bf16 holds it


def test_bad_inputs_get_one_clear_error():
    with pytest.raises(fxq.LowerError, match="fxq.quantize"):
        fxq.lower(nn.Linear(16, 16))
    qm = quantize_tiny("mul_after")
    for bad in (torch.float32, torch.int8, "fp16"):
        with pytest.raises(fxq.LowerError, match="torch.float16 or dtype=torch.bfloat16"):
            fxq.lower(qm, bad)
