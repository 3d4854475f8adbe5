"""What the checker reports (onnx_post.checker, onnx_post.check_cli): the reason legend, module names, the table
for a real plain export, and the `fxq check` CLI's output, JSON and exit codes.
"""
from __future__ import annotations

import json

import onnx
import pytest
from onnx import helper

from checker_graphs import attention_model, gemm_model
from onnx_post.check_cli import main
from onnx_post.checker import REASONS, check_model
from onnx_post.checker_graph import module_of


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
