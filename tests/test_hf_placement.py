"""Placement on Hugging Face ViT (default config) and BERT with a padding mask."""
import pytest
import torch
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

import fxq
from fxq import roles as R
from fxq.pt2e import FxqQuantizer, qdq_sites
from hf_models import bert_inputs, small_bert, vit, vit_inputs

PER_LAYER = {R.LAYER_NORM_OUTPUT: 2, R.LINEAR_WEIGHT: 6, R.LINEAR_INPUT: 2, R.ATTN_Q: 1, R.ATTN_K: 1, R.ATTN_V: 1,
             R.ATTN_PROBS: 1}


@pytest.fixture(scope="module")
def vit_results(vit_base_fp8):  # tests/conftest.py: ViT-base quantized once per session
    return {attn: qm for attn, (_, qm) in vit_base_fp8.items()}


def test_vit_has_14_sites_per_layer_and_168_in_all(vit_results):
    for attn, qm in vit_results.items():
        p = qm.placement
        assert len(p.sites) == 168, attn
        for layer in range(12):
            prefix = f"vit.layers.{layer}."
            counts = {}
            for s in p.sites:
                if s.module.startswith(prefix):
                    counts[s.role] = counts.get(s.role, 0) + 1
            assert counts == PER_LAYER, (attn, layer)
        # The classifier reads the CLS token only: a GEMV, left in float by default.
        assert [s for s in p.sites if s.module == "classifier"] == []
        assert [(k.module, k.reason) for k in p.skips] == [("classifier", "gemv")] and p.attention_blocks == 12


def test_vit_eager_and_sdpa_place_identically(vit_results):
    eager, sdpa = vit_results["eager"], vit_results["sdpa"]
    assert sorted(eager.placement.keys()) == sorted(sdpa.placement.keys())
    # Same weights and data, so the calibrated amax agree too (attention maths differ only in rounding).
    for k in eager.amax:
        assert sdpa.amax[k] == pytest.approx(eager.amax[k], rel=1e-3), k


def test_vit_layer_norm_output_shared_by_qkv(vit_results):
    site = next(s for s in vit_results["eager"].placement.sites if s.key == "vit.layers.0.layernorm_before:layer_norm.output")
    assert len(site.consumers) == 3


def test_vit_report_table(vit_results):
    rep = vit_results["eager"].report()
    text = rep.table()
    assert "vit.layers.11.attention" in text and "attn.probs" in text
    assert rep.summary().startswith("168 FP8 quantizers")
    probs = [r for r in rep.rows() if r["role"] == R.ATTN_PROBS]
    assert all(r["scale"] == pytest.approx(1 / 448) and r["calibrator"] == "fixed" for r in probs)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_with_padding_mask_quantizes_every_attention_block(attn):
    model = small_bert(attn)
    qm = fxq.quantize(model, bert_inputs(), [bert_inputs(4) for _ in range(2)], progress=False)
    p = qm.placement
    assert p.attention_blocks == 2 and [(k.module, k.reason) for k in p.skips] == [("pooler.dense", "gemv")]
    for role in (R.ATTN_Q, R.ATTN_K, R.ATTN_V, R.ATTN_PROBS):
        assert p.count(role) == 2
    x = bert_inputs(3)
    with torch.no_grad():
        ref, out = model(**x).last_hidden_state, qm(**x).last_hidden_state
    assert fxq.verify.compare(ref, out)["cosine"] > 0.99999  # measured 0.9999986 (eager and sdpa)


def test_pt2e_gives_the_same_placement_and_scales_as_quantize():
    torch.manual_seed(0)
    model = vit("sdpa", num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                image_size=64, patch_size=16)
    example, calib = vit_inputs(1, 64), [vit_inputs(4, 64) for _ in range(2)]
    qm = fxq.quantize(model, example, calib, progress=False)
    prepared = prepare_pt2e(fxq.capture(model, example, dynamic_batch=True), FxqQuantizer())
    for batch in calib:
        prepared(**batch)
    converted = convert_pt2e(prepared, fold_quantize=False)
    ours, theirs = qdq_sites(qm.graph_module), qdq_sites(converted)
    assert len(ours) == 2 * 14  # the classifier is a GEMV: not quantized
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert theirs[k] == pytest.approx(ours[k], rel=1e-6), k
    with torch.no_grad():
        assert fxq.verify.compare(qm(**example).logits, converted(**example).logits)["max_abs"] < 1e-4


def test_pt2e_refuses_undecomposed_sdpa():
    model = vit("sdpa", num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                image_size=32, patch_size=16)
    gm = torch.export.export(model, (), vit_inputs(1, 32)).module()
    with pytest.raises(ValueError, match="fxq.capture"):
        prepare_pt2e(gm, FxqQuantizer())
