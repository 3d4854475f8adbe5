"""Site records: capture reshapes and records once, placement only reads, records survive copies."""
import copy

import pytest
import torch

import fxq
from fxq.placement import records
from fxq import roles as R
from fxq.placement.attention import recorded_blocks
from fxq.capture.program import Inputs, capture, capture_program
from fxq.calibration.hessian import insert_hessian_observers, weight_readers
from fxq.conversion.insert import FLOAT_WEIGHT, OBSERVER, insert_observers, remove_observers, weight_layouts
from fxq.placement.matchers import record_sites
from fxq.placement.place import place
from fxq.pt2e import FxqQuantizer
from fxq.capture.transforms import TransformCounts, canonicalize
from tiny_models import TinyAttention, inputs_for

aten = torch.ops.aten


class Conv1DAndMatmul(torch.nn.Module):
    """The two [K, N] GEMM forms: HF Conv1D's addmm(bias, x, W) and x @ W."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = torch.nn.Parameter(torch.randn(32, 48)), torch.nn.Parameter(torch.randn(48))
        self.w2 = torch.nn.Parameter(torch.randn(48, 16))

    def forward(self, x):  # (B, T, 32)
        h = torch.addmm(self.b1, x.reshape(-1, 32), self.w1).relu()
        return h @ self.w2


def _structure(gm):
    return gm.code, [(n.name, n.op, n.target, n.args, n.kwargs) for n in gm.graph.nodes]


def test_place_only_reads_the_graph():
    gm = capture(TinyAttention("mul_after").eval(), inputs_for("mul_after"))
    before = _structure(gm)
    placement = place(gm, fxq.QuantConfig())
    assert _structure(gm) == before
    assert len(placement.sites) == 14 and placement.scales_moved_to_q == 1  # the count capture kept


def test_capture_transforms_are_idempotent_and_records_unchanged():
    gm = capture(TinyAttention("mul_after").eval(), inputs_for("mul_after"))
    first = [(n.name, n.meta.get(records.GEMM), n.meta.get(records.ATTENTION)) for n in gm.graph.nodes]
    code = gm.code
    assert canonicalize(gm) == TransformCounts(0, 0)
    assert gm.code == code
    assert [(n.name, n.meta.get(records.GEMM), n.meta.get(records.ATTENTION)) for n in gm.graph.nodes] == first
    assert gm.meta["fxq_transforms"] == TransformCounts(0, 1)  # the sum over runs: capture's move only


def test_gemm_and_attention_records_describe_each_site():
    gm = capture(TinyAttention("mul_after").eval(), inputs_for("mul_after"))
    gemms = records.gemms(gm)
    assert [r.group for _, r in gemms] == ["q:gemm", "k:gemm", "v:gemm", "o:gemm", "fc1:gemm", "fc2:gemm"]
    node, q = gemms[0]
    assert (q.input_arg, q.weight_arg, q.bias_arg, q.weight_nk, q.weight, q.k, q.n) == (0, 1, 2, True, "q.weight",
                                                                                         64, 64)
    assert q.flops == 2 * 2 * 8 * 64 * 64  # 2 * (B*T) * N * K at the example's batch 2, seq 8
    assert q.input(node).target is aten.layer_norm.default and q.weight_of(node).target == "q.weight"
    (block,) = recorded_blocks(gm)
    a = block.record
    assert (a.group, a.module, a.head_size, a.k_gemm) == (":attention", "", 16, "k:gemm")
    assert [n.meta[records.ATTENTION].part for n in (block.bmm1, block.softmax, block.bmm2)] == \
        ["bmm1", "softmax", "bmm2"]
    assert block.softmax.target in (aten.softmax.int, aten._softmax.default)
    assert [r.group for _, r in records.recorded(gm, records.LAYER_NORM)] == ["norm:layer_norm", "norm2:layer_norm"]
    assert record_sites(gm) == gm.meta[records.RECORDED] == 6 + 1 + 2  # GEMMs, blocks, LayerNorms


def test_kn_gemm_forms_are_recorded_with_their_layout():
    gm = capture(Conv1DAndMatmul(), torch.randn(2, 4, 32))
    (n1, addmm), (n2, mm) = records.gemms(gm)
    assert (n1.target, addmm.input_arg, addmm.weight_arg, addmm.bias_arg, addmm.weight_nk, addmm.k, addmm.n) == \
        (aten.addmm.default, 1, 2, 0, False, 32, 48)
    assert addmm.bias(n1).target == "b1" and addmm.weight_of(n1).target == "w1"
    assert (mm.bias_arg, mm.weight_nk, mm.weight, mm.k, mm.n) == (None, False, "w2", 48, 16)
    placement = place(gm)
    assert weight_layouts(placement) == {":linear.weight": True, ":linear.weight#1": True}
    assert [r.group for r in placement.gemm_records] == [":gemm", ":gemm#1"]


def test_records_survive_unlifting_deepcopy_and_rewiring():
    """Positions, not Node objects: after module(), deepcopy and Q/DQ insertion they name the right operands."""
    qm = fxq.quantize(TinyAttention("mul_after").eval(), inputs_for("mul_after"), [inputs_for("mul_after", 4)],
                      progress=False)
    for gm in (qm.graph_module, copy.deepcopy(qm.graph_module)):
        sites = {}
        for node, r in records.gemms(gm):
            x, w = r.input(node), r.weight_of(node)
            assert x.target is torch.ops.fxq.fp8_qdq.default and w.target is torch.ops.fxq.fp8_dequant.default
            sites[r.group] = (x.meta["fxq_site"], w.meta["fxq_site"])
            assert w.meta[FLOAT_WEIGHT] == r.weight == r.module + ".weight"  # the float weight the codes replace
        assert sites["q:gemm"] == ("norm:layer_norm.output", "q:linear.weight")
        assert sites["k:gemm"][0] == sites["v:gemm"][0] == "norm:layer_norm.output"
        assert sites["fc2:gemm"] == ("fc2:linear.input", "fc2:linear.weight")
        (block,) = recorded_blocks(gm)
        a = block.record
        operands = [block.bmm1.args[a.Q_ARG], block.bmm1.args[a.K_ARG], block.bmm2.args[a.PROBS_ARG],
                    block.bmm2.args[a.V_ARG]]
        assert [o.meta["fxq_site"] for o in operands] == [":attn.q", ":attn.k", ":attn.probs", ":attn.v"]
        assert (block.bmm1.name, block.softmax.name, block.bmm2.name) == (a.bmm1, a.softmax, a.bmm2)


def test_every_reader_agrees_with_placement():
    ep = capture_program(TinyAttention("mul_after").eval(), Inputs.of(inputs_for("mul_after")), True)
    placement = place(ep.graph_module)
    assert [g.id for g in placement.groups if g.kind == "attention"] == [r.group for r in placement.attention_records]
    assert {k: rs[0].transposed for k, rs in weight_readers(ep.graph_module, placement).items()} == \
        weight_layouts(placement)
    obs = insert_observers(ep.graph_module, placement)
    hessians = insert_hessian_observers(ep.graph_module, placement)
    tagged = [n for n in ep.graph.nodes if OBSERVER in n.meta]
    assert len(tagged) == len(obs) + 4 and len(hessians) == 6  # Hessians: LN1 (q, k, v), attention out, LN2, GELU
    assert remove_observers(ep.graph_module) == len(tagged)
    assert not [n for n in ep.graph.nodes if n.op == "call_module"]


def test_place_refuses_a_graph_capture_did_not_record():
    gm = torch.export.export(TinyAttention("mul_after").eval(), inputs_for("mul_after")).module()
    with pytest.raises(ValueError, match="fxq.capture.program"):
        place(gm)


def test_pt2e_transform_reshapes_and_annotate_only_reads():
    model = TinyAttention("mul_after").eval()
    gm = torch.export.export(model, inputs_for("mul_after")).module()  # not fxq-captured: scale after BMM1
    quantizer = FxqQuantizer()
    gm = quantizer.transform_for_annotation(gm)
    assert quantizer.transformed == TransformCounts(0, 1)
    assert quantizer.transform_for_annotation(gm) is gm and quantizer.transformed == TransformCounts(0, 0)
    before = _structure(gm)
    quantizer.annotate(gm)
    assert _structure(gm) == before
    assert quantizer.placement.role_counts()[R.ATTN_Q] == 1 and len(quantizer.placement.sites) == 14
    x = inputs_for("mul_after")
    torch.testing.assert_close(gm(*x), model(*x), rtol=1e-5, atol=1e-5)  # the scale move keeps float numerics
