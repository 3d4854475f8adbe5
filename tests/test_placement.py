"""Placement on tiny modules: every attention spelling gets exactly the same sites, and FP8 stays close to float."""
import pytest
import torch

import fxq
from fxq import roles as R
from fxq.placement.attention import find_attention_blocks
from fxq.capture.program import capture
from fxq.placement.place import place
from fxq.capture.transforms import canonicalize
from fxq.verify import compare
from tiny_models import SCALE_AFTER_BMM1, SPELLINGS, TinyAttention, inputs_for

# One block: LN1 output shared by Q/K/V, 4 weights + fc1/fc2 weights, O-proj and fc2 inputs, LN2 output, q/k/v/probs.
EXPECTED = {R.LAYER_NORM_OUTPUT: 2, R.LINEAR_WEIGHT: 6, R.LINEAR_INPUT: 2, R.ATTN_Q: 1, R.ATTN_K: 1, R.ATTN_V: 1,
            R.ATTN_PROBS: 1}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_gets_the_same_sites(spelling):
    model = TinyAttention(spelling).eval()
    gm = capture(model, inputs_for(spelling))
    placement = place(gm, fxq.QuantConfig())
    assert placement.attention_blocks == 1
    assert placement.role_counts() == EXPECTED
    assert placement.scales_moved_to_q == (1 if spelling in SCALE_AFTER_BMM1 else 0)
    assert placement.skips == []


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_fake_quant_stays_close_to_float(spelling):
    model = TinyAttention(spelling).eval()
    data = [inputs_for(spelling, batch=4) for _ in range(3)]
    qm = fxq.quantize(model, inputs_for(spelling), data, progress=False)
    x = inputs_for(spelling, batch=4)
    with torch.no_grad():
        ref, out = model(*x), qm(*x)
    m = compare(ref, out)
    assert m["sqnr_db"] > 33, m  # measured 34.6-37.5 dB over the spellings; a misplaced scale drops far lower
    targets = [n.target for n in qm.graph_module.graph.nodes]
    assert targets.count(torch.ops.fxq.fp8_qdq.default) == 8  # activations: 2 LN outputs, 2 linear inputs, q, k, v, probs
    assert targets.count(torch.ops.fxq.fp8_dequant.default) == 6  # FP8 weights: q, k, v, o, fc1, fc2


def test_scale_move_keeps_float_numerics():
    model = TinyAttention("mul_after").eval()
    x = inputs_for("mul_after")
    gm = capture(model, x)  # capture moved the scale onto Q (fxq.capture.transforms.canonicalize)
    assert gm.meta["fxq_transforms"].scales_moved_to_q == 1
    assert canonicalize(gm).scales_moved_to_q == 0  # nothing left to move
    (block,) = find_attention_blocks(gm)
    assert block.bmm1.args[0].target is torch.ops.aten.mul.Tensor  # BMM1 reads Q * c
    assert compare(model(*x), gm(*x))["max_abs"] < 1e-5


def test_head_size_outside_window_is_skipped_with_reason():
    model = TinyAttention("mul_after", heads=8).eval()  # head size 8 < 16
    gm = capture(model, inputs_for("mul_after"))
    placement = place(gm, fxq.QuantConfig())
    assert [(s.what, s.reason) for s in placement.skips] == [("attention", "head_size_out_of_window")]
    assert placement.count(R.ATTN_Q) == placement.count(R.ATTN_PROBS) == 0
    assert placement.count(R.LINEAR_WEIGHT) == 6  # the GEMMs are still quantized


def test_small_gemm_is_skipped_with_reason():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    gm = capture(model, torch.randn(2, 64))
    placement = place(gm, fxq.QuantConfig())
    assert placement.gemms == 2
    assert [(s.module, s.reason) for s in placement.skips] == [("2", "small_gemm")]
    assert placement.role_counts() == {R.LINEAR_INPUT: 1, R.LINEAR_WEIGHT: 1}


def test_shared_input_gets_one_quantizer():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)

        def forward(self, x):
            x = torch.relu(x)
            return self.a(x) + self.b(x)

    placement = place(capture(TwoHeads().eval(), torch.randn(2, 32)), fxq.QuantConfig())
    inputs = [s for s in placement.sites if s.role == R.LINEAR_INPUT]
    assert len(inputs) == 1 and len(inputs[0].consumers) == 2


def test_probs_need_q_k_v():
    cfg = fxq.QuantConfig(roles=fxq.RoleSpecs(attn_v=None))
    placement = place(capture(TinyAttention().eval(), inputs_for("mul_after")), cfg)
    assert placement.count(R.ATTN_PROBS) == 0 and placement.count(R.ATTN_V) == 0
    assert {(s.what, s.reason) for s in placement.skips} == {(R.ATTN_PROBS, "probs_without_qkv"),
                                                             (R.ATTN_V, "disabled_by_config")}


def test_layer_norm_input_is_never_quantized():
    gm = capture(TinyAttention().eval(), inputs_for("mul_after"))
    placement = place(gm, fxq.QuantConfig())
    nodes = {n.name: n for n in gm.graph.nodes}
    for site in placement.sites:
        for c in site.consumers:
            assert nodes[c].target is not torch.ops.aten.layer_norm.default


def test_quantized_model_holds_an_exported_program_with_every_site():
    qm = fxq.quantize(TinyAttention().eval(), inputs_for("mul_after"), [inputs_for("mul_after", 4)], progress=False)
    ep = qm.program
    assert isinstance(ep, torch.export.ExportedProgram)
    sites = [n.meta["fxq_site"] for n in ep.graph.nodes
             if n.target in (torch.ops.fxq.fp8_qdq.default, torch.ops.fxq.fp8_dequant.default)]
    assert sorted(sites) == sorted(qm.placement.keys()) and len(sites) == 14
    fp8 = [k for k, v in ep.state_dict.items() if v.dtype == torch.float8_e4m3fn]
    assert len(fp8) == 6 and not any(k in ep.state_dict for k in ("q.weight", "fc1.weight"))  # float weights are gone
    x = inputs_for("mul_after", 5)  # dynamic batch survives capture
    assert torch.equal(ep.module()(*x), qm(*x))
