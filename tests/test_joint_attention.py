"""Joint text+image attention (Flux, SD3): one softmax over both token sets, its output split back into the two
streams, each with its own O-projection. TensorRT's FP8 MHA wants BMM2's output quantized once, so fxq ties the
two O-projection input scales (Placement.tied) and the checker follows the split to every branch's Q."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from torch import nn

from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

import fxq
from checker_graphs import Builder
from fxq.conversion import ops
from fxq.pt2e import FxqQuantizer, qdq_sites
from onnx_post.checker import check_model


# -- the checker on hand-built graphs ------------------------------------------------------------------------
def joint_output_model(branches: str, head=32, heads=2, txt=8, img=16):
    """An FP8 MHA block whose output (B, txt+img, heads*head) is split by token range (or concatenated with
    another tensor) before its O-projections. branches: 'equal' / 'differ' (the two branch Q scales),
    'one_float' (one branch reaches its GEMM unquantized), 'concat' (Flux's single block: cat with an MLP
    output, one Q after the concat), 'shape_read' (no split; a Shape of the output builds the Reshape target)."""
    b = Builder()
    seq, width = txt + img, heads * head
    q, k, v = (b.input(n, ["B", heads, seq, head]) for n in ("q", "k", "v"))
    s = b.op("MatMul", [b.qdq(q), b.qdq(b.op("Transpose", [k], perm=[0, 1, 3, 2]))])
    p = b.qdq(b.op("Softmax", [s], axis=-1), scale=1 / 448)
    o = b.op("Transpose", [b.op("MatMul", [p, b.qdq(v)])], perm=[0, 2, 1, 3])
    if branches == "shape_read":  # HF's view(x.size()[:-2] + ...): a Shape of the output feeds the Reshape target
        dims = b.op("Slice", [b.op("Shape", [o]), b.const(np.array([0], np.int64)), b.const(np.array([2], np.int64))])
        target = b.op("Concat", [dims, b.const(np.array([width], np.int64))], axis=0)
        return b.model(b.op("MatMul", [b.qdq(b.op("Reshape", [o, target])), b.fp8_weight((width, 64))]))
    o = b.op("Reshape", [o, b.const(np.array([0, 0, width], np.int64))])
    if branches == "concat":
        mlp = b.input("mlp", ["B", seq, width])
        cat = b.op("Concat", [o, mlp], axis=-1)
        return b.model(b.op("MatMul", [b.qdq(cat), b.fp8_weight((2 * width, 64))]))
    parts = ["txt_part", "img_part"]
    b.nodes.append(helper.make_node("Split", [o, b.const(np.array([txt, img], np.int64))], parts, axis=1,
                                    name="n_split"))
    scales = {"equal": (1 / 64, 1 / 64), "differ": (1 / 64, 1 / 32), "one_float": (1 / 64, None)}[branches]
    outs = []
    for part, scale in zip(parts, scales):
        x = part if scale is None else b.qdq(part, scale=scale)
        outs.append(b.op("MatMul", [x, b.fp8_weight((width, 64))]))
    return b.model(*outs)


@pytest.mark.parametrize("branches, reasons", [
    ("equal", []),
    ("concat", []),
    ("differ", ["output_scales_differ"]),
    ("one_float", ["output_not_quantized"]),
    ("shape_read", []),
])
def test_checker_follows_a_split_or_concat_attention_output(branches, reasons):
    rep = check_model(joint_output_model(branches))
    (blk,) = rep.attention
    assert blk.reasons == reasons
    assert blk.ready == (not reasons)
    if branches == "differ":
        assert "2 branches quantized at different scales" in blk.detail
    if branches == "one_float":
        assert "MatMul" in blk.detail and [g.ready for g in rep.gemms][-2:] == [True, False]


# -- fxq on a torch model --------------------------------------------------------------------------------------
class JointAttention(nn.Module):
    """Flux's double-stream block, reduced: text and image tokens projected apart, attended together, split."""

    def __init__(self, width=64, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv_img, self.qkv_txt = nn.Linear(width, 3 * width), nn.Linear(width, 3 * width)
        self.out_img, self.out_txt = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, img, txt):
        bsz, n_txt, width = txt.shape
        qkv = torch.cat([self.qkv_txt(txt), self.qkv_img(img)], dim=1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(bsz, -1, width)
        o_txt, o_img = o.split([n_txt, o.shape[1] - n_txt], dim=1)
        return self.out_img(o_img), self.out_txt(o_txt)


@pytest.fixture(scope="module")
def joint():
    torch.manual_seed(0)
    model = JointAttention().eval()
    with torch.no_grad():  # q = k = 3x: each token attends to itself, so text outputs carry the 6x text values
        eye = torch.eye(64)
        model.qkv_txt.weight.copy_(torch.cat([3 * eye, 3 * eye, 6 * eye]))
        model.qkv_img.weight.copy_(torch.cat([3 * eye, 3 * eye, eye]))
    batches = [{"img": torch.randn(2, 16, 64), "txt": torch.randn(2, 8, 64)} for _ in range(3)]
    qm = fxq.quantize(model, batches[0], batches[1:], progress=False)
    return model, batches, qm


def _ranges(model, batches) -> dict[str, float]:
    """The largest |input| of each O-projection over the calibration batches, on the float model."""
    seen = {"out_img": [], "out_txt": []}
    hooks = [getattr(model, n).register_forward_hook(lambda m, a, out, n=n: seen[n].append(a[0].abs().max()))
             for n in seen]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for h in hooks:
        h.remove()
    return {n: float(max(v)) for n, v in seen.items()}


def test_split_attention_output_shares_one_scale(joint):
    model, batches, qm = joint
    (tied,) = qm.placement.tied
    assert sorted(tied) == ["out_img:linear.input", "out_txt:linear.input"]
    ranges = _ranges(model, batches[1:])
    assert ranges["out_txt"] > 2 * ranges["out_img"]  # the test means something: the two ranges are far apart
    # The calibration keeps each site's own amax; the graph's scale is the larger one for both.
    assert qm.amax["out_img:linear.input"] == pytest.approx(ranges["out_img"], rel=1e-3)
    assert qm.amax["out_txt:linear.input"] == pytest.approx(ranges["out_txt"], rel=1e-3)
    scales = qdq_sites(qm.graph_module)
    assert scales["out_img:linear.input"] == scales["out_txt:linear.input"] == \
        pytest.approx(ops.scale_from_amax(ranges["out_txt"]), rel=1e-6)
    assert "1 split attention outputs: their O-projection inputs share one scale" in qm.report().summary()


def test_no_tie_once_one_projection_falls_back_or_attention_is_float(joint):
    model, batches, qm = joint
    fell_back = fxq.quantize(model, batches[0], None, fxq.QuantConfig(fallback=("out_txt:gemm",)),
                             calibration=qm.calibration, progress=False)  # the same calibration
    assert fell_back.placement.tied == []
    assert qdq_sites(fell_back.graph_module)["out_img:linear.input"] == \
        pytest.approx(ops.scale_from_amax(qm.amax["out_img:linear.input"]), rel=1e-6)  # its own range again
    gemm_only = fxq.quantize(model, batches[0], batches[1:], fxq.preset("gemm-only"), progress=False)
    assert gemm_only.placement.tied == [] and gemm_only.placement.count("linear.input") == 4


def test_pt2e_ties_the_same_sites_at_the_same_scales(joint):
    model, batches, qm = joint
    prepared = prepare_pt2e(fxq.capture(model, batches[0], dynamic_batch=True), FxqQuantizer())
    for batch in batches[1:]:
        prepared(**batch)
    ours, theirs = qdq_sites(qm.graph_module), qdq_sites(convert_pt2e(prepared, fold_quantize=False))
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert theirs[k] == pytest.approx(ours[k], rel=1e-6), k


def test_split_attention_output_is_ready_in_the_onnx(joint, tmp_path):
    _, batches, qm = joint
    qm.export_onnx(tmp_path / "joint.onnx")
    rep = check_model(tmp_path / "joint.onnx")
    (blk,) = rep.attention
    assert (blk.ready, blk.reasons) == (True, [])
    assert [g.ready for g in rep.gemms] == [True] * 6  # 2 QKV, BMM1, BMM2, 2 O-projections
    ops = [n.op_type for n in onnx.load(tmp_path / "joint.onnx").graph.node]
    assert "Split" in ops or "Slice" in ops
