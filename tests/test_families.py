"""The architecture matrix in small: every family in benchmarks/families.py, end to end.

Quantize (2 tiny calibration batches), export FP16 ONNX, check TensorRT readiness, and run the
ONNX in onnxruntime against the torch fake-quant model. No per-family code in fxq: what differs
between families here is data (expected counts), never a code path.
"""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import fxq
from fxq.verify import compare, first_output, run_onnx
from onnx_post.checker import check_model

# Load benchmarks/families.py by path: a bare "import families" could pick up another package.
_spec = importlib.util.spec_from_file_location(
    "fxq_bench_families", Path(__file__).resolve().parents[1] / "benchmarks" / "families.py")
fam = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(fam)

NAMES = list(fam.FAMILIES)
ATTENTION_BLOCKS = {"swin": 4}  # 2 stages x 2 blocks; every other small config has 2 layers
# Casts that stay in the FP16 graph, all outside GEMM and attention inputs (asserted below):
CASTS = {
    "bert": 1, "distilbert": 1,  # int64 padding mask -> bool, feeding the mask's GatherND
    "clip_text": 2,  # int ids -> int32 and Equal -> int32 for the pooled-token ArgMax
    "gpt2": 1,  # bool -> int64 before the position-id CumSum
    # int64 mask -> bool. The FP16 graph is the float32 capture converted on the graph: T5's float32
    # RMSNorm variance runs in fp16 too, and HF's fp16-only overflow clamp (a branch on dtype) is not there.
    "t5_encoder": 1,
}
# The fp32 ONNX computes what qm computes (same Q/DQ sites and scales); only float rounding order
# differs, which can flip a rare FP8 code. Measured cosine 1 - 1e-13; 0.999 leaves room for flips.
FP32_COSINE = 0.999
# The FP16 ONNX against the fp32 fake-quant model: fp16 rounding flips many FP8 codes and random
# weights amplify them (measured min 0.9985, CLIP text). 0.98 still catches a misplaced Q/DQ.
FP16_COSINE = 0.98

# gemv: poolers and one-token heads; conv_channels_not_16: the 3-channel patch conv of every vision
# family (FP8 convs: tests/test_conv.py)
EXPECTED_SKIPS = ("gemv", "conv_channels_not_16")


def _quantize(name, attn="eager"):
    model, example, batches = {**fam.FAMILIES, **fam.UNLISTED}[name].build("small", attn)
    return fxq.quantize(model, example, batches, progress=False), example


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_family_end_to_end(name, tmp_path):
    qm, example = _quantize(name)
    blocks = ATTENTION_BLOCKS.get(name, 2)
    p = qm.placement
    assert p.attention_blocks == blocks
    assert [k for k in p.skips if k.reason not in EXPECTED_SKIPS] == [], qm.report().table()
    assert {r: p.count(r) for r in ("attn.q", "attn.k", "attn.v", "attn.probs")} == dict.fromkeys(
        ("attn.q", "attn.k", "attn.v", "attn.probs"), blocks)

    res = qm.export_onnx(tmp_path / "fp16.onnx", dtype=torch.float16)
    rep = check_model(res.path)
    assert len(rep.attention) == blocks
    assert [a.reasons for a in rep.attention if not a.ready] == [], rep.format_table()
    big = [g for g in rep.gemms if (g.k or 0) >= 16 and (g.n or 0) >= 16]
    assert len(big) == p.gemms + 2 * blocks  # linears plus BMM1 and BMM2 of every block
    gemv = sum(k.reason == "gemv" for k in p.skips)
    assert [(g.name, g.reasons) for g in big if not g.ready and g.reasons != ["gemv"]] == [], rep.format_table()
    assert sum(g.reasons == ["gemv"] for g in big) == gemv
    assert rep.casts == CASTS.get(name, 0)
    _assert_no_cast_next_to_qdq(res.path)

    with torch.no_grad():
        ref = first_output(qm(**example))
    # onnxruntime's ReluQuantRewrite drops a Relu before a FLOAT8 QuantizeLinear (right for uint8
    # zero points only), which breaks T5's ReLU FFN: compare with graph optimizations off.
    fp16 = run_onnx(res.path, example, torch.float16, optimize=False)[0]
    assert compare(ref, fp16)["cosine"] > FP16_COSINE
    res32 = qm.export_onnx(tmp_path / "fp32.onnx", dtype=torch.float32)
    fp32 = run_onnx(res32.path, example, torch.float32, optimize=False)[0]
    assert compare(ref, fp32)["cosine"] > FP32_COSINE


def _assert_no_cast_next_to_qdq(path):
    import onnx

    model = onnx.load(str(path))
    made = {o: n for n in model.graph.node for o in n.output}
    qdq = {"QuantizeLinear", "DequantizeLinear", "MatMul", "Gemm", "Softmax"}
    for n in model.graph.node:
        if n.op_type != "Cast":
            continue
        before = made.get(n.input[0])
        after = [m for m in model.graph.node if n.output[0] in m.input]
        assert before is None or before.op_type not in qdq, f"Cast after {before.op_type}"
        assert not any(m.op_type in qdq for m in after), f"Cast before {[m.op_type for m in after]}"


@pytest.mark.parametrize("name", list(fam.UNLISTED), ids=list(fam.UNLISTED))
def test_unlisted_family_needs_no_new_code(name, tmp_path):
    """Spellings no listed family has (see UNLISTED notes): every block and big GEMM still ready."""
    qm, _ = _quantize(name)
    assert qm.placement.attention_blocks > 0
    # tiny position-bias MLPs may skip
    assert [k for k in qm.placement.skips if k.what != "gemm" and k.reason not in EXPECTED_SKIPS] == []
    rep = check_model(qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float16).path)
    assert len(rep.attention) == qm.placement.attention_blocks
    assert [a.reasons for a in rep.attention if not a.ready] == [], rep.format_table()
    assert all(g.ready or g.skipped for g in rep.gemms if (g.k or 0) >= 16 and (g.n or 0) >= 16), rep.format_table()


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_sdpa_places_like_eager(name):
    """SDPA is rewritten into matmul -> softmax -> matmul at capture: same sites as eager attention."""
    if "sdpa" not in fam.FAMILIES[name].attn:
        pytest.skip(f"{name} has no sdpa attention")
    eager, _ = _quantize(name, "eager")
    sdpa, _ = _quantize(name, "sdpa")
    assert sdpa.placement.attention_blocks == eager.placement.attention_blocks
    assert sdpa.placement.role_counts() == eager.placement.role_counts()
    assert sdpa.placement.skips == eager.placement.skips
    assert all(k.reason in EXPECTED_SKIPS for k in sdpa.placement.skips)


def test_head_size_out_of_window_is_reported(tmp_path):
    """Head size 8: attention stays in float with a reason in fxq and the checker; GEMMs still FP8."""
    f = fam.FAMILIES["vit"]
    cfg = dict(f.small, num_attention_heads=8)  # 64 / 8 = head size 8 < 16
    small = fam.Family("vit_head8", f.model, f.config, f.inputs, cfg)
    model, example, batches = small.build("small")
    qm = fxq.quantize(model, example, batches, progress=False)
    skips = [k for k in qm.placement.skips if k.reason not in EXPECTED_SKIPS]
    assert [(k.what, k.reason, k.detail) for k in skips] == [("attention", "head_size_out_of_window", "head size 8")] * 2
    gemv = sum(k.reason == "gemv" for k in qm.placement.skips)
    assert qm.placement.count("attn.q") == 0 and qm.placement.count("linear.weight") == qm.placement.gemms - gemv
    rep = check_model(qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float16).path)
    assert [(a.reasons, a.skipped) for a in rep.attention] == [(["head_size_out_of_window"], True)] * 2  # by design
    assert rep.ready, rep.format_table()  # so `fxq check --strict` passes on fxq's own file
