"""Tests for the TensorRT FP8 readiness checker (onnx_post.checker, onnx_post.check_cli).

Graphs are built with onnx.helper (no binary goldens): one ready GEMM / attention block, then one
thing broken at a time, asserting the exact reason codes.
"""
from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_graphs
from onnx_post.check_cli import main
from onnx_post.checker import REASONS, check_model
from onnx_post.checker_graph import module_of

F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT
FP8 = ml_dtypes.float8_e4m3fn


class Builder:
    """Just enough of a graph builder: nodes in order, unique names, opset 21 / IR 10."""

    def __init__(self):
        self.nodes, self.inits, self.inputs = [], [], []

    def input(self, name, shape, dtype=F16):
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def const(self, array, prefix="c"):
        name = f"{prefix}{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, **attrs):
        out = f"{op_type.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n_{out}", **attrs))
        return out

    def qdq(self, x, scale=1 / 64, sdtype=np.float16, zp=0.0, zdtype=FP8, **attrs):
        s = self.const(np.array(scale, dtype=sdtype), "scale")
        z = self.const(np.full(np.shape(scale), zp, dtype=zdtype), "zp")
        return self.op("DequantizeLinear", [self.op("QuantizeLinear", [x, s, z], **attrs), s, z],
                       **attrs)

    def fp8_weight(self, shape, sdtype=np.float16):
        w = self.const(np.full(shape, 0.5, dtype=FP8), "w")
        return self.op("DequantizeLinear", [w, self.const(np.array(0.01, dtype=sdtype), "s")])

    def model(self, *outs):
        """A model whose outputs are `outs`; graph output types come from shape inference."""
        m = onnx_graphs.model(self.nodes, self.inputs, [], self.inits, check=False)
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(m).graph.value_info}
        m.graph.output.extend(inferred[o] for o in outs)
        if all(i.type.tensor_type.HasField("shape") for i in self.inputs):
            onnx.checker.check_model(m, full_check=True)
        return m


# -- GEMMs ---------------------------------------------------------------------------------------
def gemm_model(break_=None):
    """x (1, 8, 64) -> Q/DQ -> MatMul <- DQ <- FP8 weight (64, 32), with one thing broken."""
    b = Builder()
    x = b.input("x", [1, 8, 64])
    if break_ == "a_cast":
        a = b.op("Cast", [b.qdq(x)], to=F16)
    elif break_ == "a_int8":
        a = b.qdq(x, zdtype=np.int8)
    elif break_ == "a_zero_point":
        a = b.qdq(x, zp=1.0)
    elif break_ == "a_per_channel":
        a = b.qdq(x, scale=np.full(64, 1 / 64), axis=-1)
    else:
        a = b.qdq(x)
    if break_ == "b_float":
        w = b.const(np.full((64, 32), 0.5, dtype=np.float16))
    elif break_ == "b_runtime_q":
        w = b.qdq(b.const(np.full((64, 32), 0.5, dtype=np.float16)))
    elif break_ == "b_int8":
        w = b.op("DequantizeLinear", [b.const(np.ones((64, 32), np.int8)),
                                      b.const(np.array(0.01, np.float16))])
    elif break_ == "b_per_channel":  # per-channel FP8 weights are fine
        w = b.op("DequantizeLinear", [b.const(np.ones((64, 32), FP8)),
                                      b.const(np.full(32, 0.01, np.float16))], axis=1)
    elif break_ == "small_n":
        w = b.fp8_weight((64, 8))
    else:
        w = b.fp8_weight((64, 32))
    return b.model(b.op("MatMul", [a, w]))


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


# -- attention -----------------------------------------------------------------------------------
def attention_model(break_=None, head=32, seq=16, heads=4, shapes=True):
    """Q, K, V (B, H, T, hs) -> FP8 MHA as TensorRT wants it -> FP8 O-projection.

    Batch is symbolic everywhere (dynamic batch is fine); a runtime additive mask sits before
    Softmax (allowed).
    """
    b = Builder()
    shape = ["B", heads, seq, head] if shapes else [None] * 4  # rank only: onnx.checker wants a shape field
    q_in, k_in, v_in = (b.input(n, shape) for n in ("q", "k", "v"))
    mask = b.input("mask", ["B", 1, 1, seq])
    scale = b.const(np.array(head ** -0.5, np.float16))
    q = b.op("Mul", [q_in, scale]) if break_ != "scale_after" else q_in
    q = b.qdq(q) if break_ not in ("q", "float") else q  # "float": the block as fxq leaves it (no FP8 MHA)
    kt = b.op("Transpose", [k_in], perm=[0, 1, 3, 2])  # K^T before its Q/DQ, as ModelOpt does
    kt = b.qdq(kt) if break_ not in ("k", "float") else kt
    s = b.op("MatMul", [q, kt])  # BMM1: (B, H, T, T)
    if break_ == "scale_after":
        s = b.op("Mul", [s, scale])
    if break_ == "div_after":
        s = b.op("Div", [s, b.const(np.array(head ** 0.5, np.float16))])
    if break_ == "cast":
        s = b.op("Cast", [s], to=F16)
    s = b.op("Add", [s, mask])
    if break_ == "fp32_softmax":  # HF eager: softmax(dtype=float32).to(float16)
        p = b.op("Cast", [b.op("Softmax", [b.op("Cast", [s], to=F32)], axis=-1)], to=F16)
    else:
        p = b.op("Softmax", [s], axis=-1)
    if break_ not in ("softmax_q", "float"):
        p = b.qdq(p, scale=1 / 256 if break_ == "softmax_scale" else 1 / 448)
    v = b.qdq(v_in) if break_ not in ("v", "float") else v_in
    o = b.op("MatMul", [p, v])  # BMM2: (B, H, T, hs)
    o = b.op("Transpose", [o], perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, b.const(np.array([0, 0, heads * head], np.int64))])
    o = b.qdq(o) if break_ != "output" else o
    return b.model(b.op("MatMul", [o, b.fp8_weight((heads * head, 64))]))


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


def test_reasons_legend_covers_every_code():
    codes = {"input_a_not_dq", "input_b_not_dq", "weight_not_fp8_initializer",
             "scale_dtype_mismatch", "zero_point_nonzero", "activation_not_per_tensor", "not_fp8",
             "small_gemm", "gemv", "q_not_fp8", "k_not_fp8", "v_not_fp8", "softmax_not_quantized",
             "softmax_scale_not_1_448", "scale_after_bmm1", "cast_in_block",
             "head_size_out_of_window", "head_size_unknown", "dynamic_seq_len",
             "output_not_quantized", "output_scales_differ",
             # numeric checks (tests/test_checker_numeric.py)
             "scale_zero", "scale_subnormal", "scale_nonfinite", "scale_negative", "fp8_nan_code",
             "fp16_inf", "initializer_nan"}
    codes |= {"weight_scale_not_per_channel"}  # per-tensor or 1-D along N for weights (c8b)
    codes |= {"conv_input_not_dq", "conv_weight_not_fp8_initializer", "conv_bias_dtype_mismatch", "conv_grouped",
              "conv_channels_not_16", "conv_kernel_too_large"}  # tests/test_conv.py
    assert set(REASONS) == codes and all(REASONS.values())


def test_module_names():
    n = helper.make_node("MatMul", ["a", "b"], ["c"], name="node_MatMul_26")
    p = n.metadata_props.add()
    p.key, p.value = ("pkg.torch.onnx.name_scopes",
                      "['', 'layers.0', 'layers.0.attention', 'layers.0.attention.q_proj', 'linear']")
    assert module_of(n) == "layers.0.attention.q_proj"
    ts = helper.make_node("MatMul", ["a", "b"], ["c"], name="/vit/layer.0/attention/query/MatMul")
    assert module_of(ts) == "vit.layer.0.attention.query"
    assert module_of(helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")) == "mm"


# -- a real plain export -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_path(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                 intermediate_size=128, image_size=32, patch_size=8)
    path = tmp_path_factory.mktemp("vit") / "vit_small.onnx"
    torch.onnx.export(transformers.ViTModel(cfg).eval(), (torch.randn(1, 3, 32, 32),), str(path),
                      dynamo=True, opset_version=21)
    return path


def test_plain_vit_export(vit_path):
    rep = check_model(vit_path)
    assert len(rep.gemms) == 17  # 2 layers x (4 attention + 2 MLP + 2 BMM) + pooler Gemm
    assert sum(g.ready for g in rep.gemms) == 0 and not rep.ready
    assert len(rep.attention) == 2
    for blk in rep.attention:
        assert blk.reasons == ["q_not_fp8", "k_not_fp8", "v_not_fp8", "softmax_not_quantized",
                               "output_not_quantized"]
        assert blk.head_size == 16
    q_proj = next(g for g in rep.gemms if g.module == "layers.0.attention.q_proj")
    assert q_proj.reasons == ["input_a_not_dq", "input_b_not_dq"]
    assert (q_proj.k, q_proj.n) == (64, 64)
    assert rep.attention[1].module == "layers.1.attention"
    assert rep.graph_dtype == "float32" and rep.casts == 0
    table = rep.format_table()
    assert "layers.1.mlp.fc2" in table and table.splitlines()[-1] == rep.summary()


# -- CLI -----------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    def save(model, name="m.onnx"):
        onnx.save(model, tmp_path / name)
        return str(tmp_path / name)
    return save


def test_cli_exit_codes(saved, capsys):
    ready, broken = saved(attention_model(), "ok.onnx"), saved(attention_model("v"), "bad.onnx")
    assert main([ready]) == 0
    assert main([ready, "--strict"]) == 0
    assert main([broken]) == 0
    assert main([broken, "--strict"]) == 1
    assert main([saved(gemm_model("small_n"), "small.onnx"), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "GEMMs: 3/3 ready (both inputs DQ) | attention: 1/1 ready" in out
    assert "v_not_fp8" in out


def test_cli_json(saved, capsys):
    assert main([saved(attention_model("softmax_q")), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ready"] is False and d["graph_dtype"] == "float16" and d["casts"] == 0
    assert d["attention"][0]["reasons"] == ["softmax_not_quantized"]
    assert len(d["gemms"]) == 3 and set(d["reasons"]) == set(REASONS)


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello world\n")
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases = [(tmp_path / "missing.onnx", "no such file"), (tmp_path, "is a directory"),
             (tmp_path / "notes.txt", "is not an ONNX model"),
             (tmp_path / "empty.onnx", "is not an ONNX model")]
    for path, what in cases:
        assert main([str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fxq check: error: ") and what in err and err.endswith(")")
        assert len(err.splitlines()) == 1


def test_cli_help_has_example(capsys):
    assert main(["--help"]) == 0
    assert "fxq check out/vit_fp8.onnx --strict" in capsys.readouterr().out


def test_softmax_scale_detail():
    (blk,) = check_model(attention_model("softmax_scale")).attention
    assert "probs scale 0.00390625, want 1/448 = 0.00223214" in blk.detail
