"""The checker's numeric checks (onnx_post/checker_numeric.py), `fxq check --verify`, and its exit codes.

Graphs are built in code: x -> Q/DQ -> MatMul <- DQ <- FP8 weight, with one value broken at a time.
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

F16 = TensorProto.FLOAT16
FP8 = ml_dtypes.float8_e4m3fn


def qdq_gemm(x_scale=1 / 64, w_scale=0.01, w=None, dtype=np.float16, batch="N", extra_weight=None, mask=None):
    """x (batch, 8, 64) -> Q/DQ -> MatMul <- DQ(w FP8 (64, 32)) [-> MatMul extra_weight] [-> Add mask] -> y."""
    w = np.full((64, 32), 0.5, dtype=FP8) if w is None else w
    inits = [numpy_helper.from_array(np.array(x_scale, dtype=dtype), "xs"),
             numpy_helper.from_array(np.array(w_scale, dtype=dtype), "ws"),
             numpy_helper.from_array(np.zeros((), dtype=FP8), "zp"),
             numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "zp"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "zp"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w", "ws", "zp"], ["wd"], name="dq_w"),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="gemm")]
    out, width = "y", 32
    if extra_weight is not None:
        width = extra_weight.shape[1]
        inits.append(numpy_helper.from_array(extra_weight, "w2"))
        nodes.append(helper.make_node("MatMul", [out, "w2"], ["y2"], name="gemm2"))
        out = "y2"
    if mask is not None:
        inits.append(numpy_helper.from_array(mask, "mask"))
        nodes.append(helper.make_node("Add", [out, "mask"], ["y3"], name="add_mask"))
        out = "y3"
    t = F16 if dtype == np.float16 else TensorProto.FLOAT
    return onnx_graphs.model(nodes, [("x", t, [batch, 8, 64])], [(out, t, [batch, 8, width])], inits)


def reasons(m):
    return [r.reason for r in check_model(m).numeric]


def save(m, path, external=False):
    onnx.save(m, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    return path


def test_clean_graph_has_no_numeric_problem():
    rep = check_model(qdq_gemm())
    assert rep.numeric == [] and rep.ready


@pytest.mark.parametrize("x_scale,code", [(0.0, "scale_zero"), (1e-6, "scale_subnormal"),
                                          (float("inf"), "scale_nonfinite"), (float("nan"), "scale_nonfinite"),
                                          (-0.01, "scale_negative")])
def test_bad_activation_scale(x_scale, code):
    rep = check_model(qdq_gemm(x_scale=x_scale))
    assert [(r.reason, r.tensor) for r in rep.numeric] == [(code, "xs"), (code, "xs")]  # read by Q and DQ
    assert {r.node for r in rep.numeric} == {"q_x", "dq_x"}
    assert not rep.ready and code in rep.summary()


def test_subnormal_is_relative_to_the_scale_dtype():
    assert reasons(qdq_gemm(x_scale=1e-6, dtype=np.float32)) == []  # normal in float32
    assert reasons(qdq_gemm(w_scale=1e-7)) == ["scale_subnormal"]  # weight DQ scale in fp16


def test_fp8_nan_codes_in_weight():
    codes = np.full((64, 32), 0x38, dtype=np.uint8)  # 1.0
    codes[0, :3] = [0x7F, 0xFF, 0x7F]
    (row,) = check_model(qdq_gemm(w=codes.view(FP8))).numeric
    assert (row.reason, row.tensor) == ("fp8_nan_code", "w") and row.detail.startswith("3 NaN codes")


def test_fp8_max_codes_are_not_nan():
    codes = np.full((64, 32), 0x7E, dtype=np.uint8)  # 448, the largest finite E4M3FN
    codes[1] = 0xFE  # -448
    assert reasons(qdq_gemm(w=codes.view(FP8))) == []


def test_fp16_inf_weight_flagged_but_inf_mask_is_not():
    w2 = np.ones((32, 16), np.float16)
    w2[3, 4] = np.inf
    mask = np.zeros((8, 16), np.float16)
    mask[:, -2:] = -np.inf  # a padding mask: -inf there is intended
    rep = check_model(qdq_gemm(extra_weight=w2, mask=mask))
    assert [(r.reason, r.tensor, r.detail) for r in rep.numeric] == [("fp16_inf", "w2", "1 inf values")]


def test_nan_in_any_float_initializer():
    mask = np.zeros((8, 32), np.float16)
    mask[0, 0] = np.nan
    assert reasons(qdq_gemm(mask=mask)) == ["initializer_nan"]


def test_numeric_problems_in_table_json_and_strict(tmp_path, capsys):
    path = save(qdq_gemm(x_scale=0.0), tmp_path / "m.onnx")
    assert main([str(path)]) == 0  # checked: not --strict
    out = capsys.readouterr().out
    assert "Numeric problems (2)" in out and "scale_zero" in out
    assert main([str(path), "--strict"]) == 1
    capsys.readouterr()
    assert main([str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ready"] is False and {r["reason"] for r in doc["numeric"]} == {"scale_zero"}
    assert doc["reasons"]["scale_zero"] == REASONS["scale_zero"]


def test_clean_file_strict_exit_0(tmp_path):
    assert main([str(save(qdq_gemm(), tmp_path / "m.onnx")), "--strict"]) == 0


def test_truncated_external_data_is_an_io_error(tmp_path, capsys):
    path = save(qdq_gemm(), tmp_path / "m.onnx", external=True)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    assert main([str(path), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxq check: error: cannot read") and "truncated" in err and "zero_point" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_external_data_is_an_io_error(tmp_path, capsys):
    path = save(qdq_gemm(), tmp_path / "m.onnx", external=True)
    (tmp_path / "m.onnx.data").unlink()
    assert main([str(path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_external_data_scanned_for_nan_codes(tmp_path):
    codes = np.full((64, 32), 0x38, dtype=np.uint8)
    codes[5, 5] = 0x7F
    path = save(qdq_gemm(w=codes.view(FP8)), tmp_path / "m.onnx", external=True)
    assert [r.reason for r in check_model(path).numeric] == ["fp8_nan_code"]


@pytest.mark.parametrize("content,what", [(b"", "not an ONNX model"), (b"\x00\xff" * 999, "not an ONNX model"),
                                          (b"hello, I am text\n", "not an ONNX model")])
def test_unreadable_files_exit_2(tmp_path, capsys, content, what):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    assert main([str(p), "--strict"]) == 2
    err = capsys.readouterr().err
    assert what in err and len(err.strip().splitlines()) == 1


def test_truncated_onnx_file_exit_2(tmp_path, capsys):
    p = save(qdq_gemm(), tmp_path / "m.onnx")
    p.write_bytes(p.read_bytes()[:-40])
    assert main([str(p)]) == 2
    assert "fxq check: error:" in capsys.readouterr().err


def test_directory_and_bad_flag_exit_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main([str(tmp_path / "m.onnx"), "--no-such-flag"]) == 2


def test_verify_finite_graph(tmp_path, capsys):
    path = save(qdq_gemm(), tmp_path / "m.onnx")
    assert main([str(path), "--verify", "--strict"]) == 0
    out = capsys.readouterr().out
    assert "Verify (onnxruntime, random inputs x[2, 8, 64])" in out and "y [2, 8, 32]: finite" in out


def test_verify_flags_nan_outputs_exit_1(tmp_path, capsys):
    codes = np.full((64, 32), 0x38, dtype=np.uint8)
    codes[:, 7] = 0x7F  # one output column is NaN
    path = save(qdq_gemm(w=codes.view(FP8)), tmp_path / "m.onnx")
    assert main([str(path), "--verify"]) == 1  # even without --strict
    out = capsys.readouterr().out
    assert "NON-FINITE: 16 of 512 values NaN/inf" in out
    assert main([str(path), "--verify", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verify"]["ok"] is False and doc["verify"]["outputs"]["y"]["nonfinite"] == 16


def test_verify_finds_nan_the_value_checks_cannot_see(tmp_path, capsys):
    """fp16 overflow at runtime: every stored value is finite, the output is not."""
    path = save(qdq_gemm(extra_weight=np.full((32, 16), 60000, np.float16)), tmp_path / "m.onnx")
    assert check_model(path).numeric == []
    assert main([str(path), "--verify"]) == 1


def test_verify_int_inputs_get_valid_ids(tmp_path):
    from onnx_post.checker_verify import verify_outputs

    emb = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "emb")
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "axes"], ["mu"]),
             helper.make_node("Div", ["e", "mu"], ["y"])]  # a zero mask would give inf
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    m = onnx_graphs.model(nodes, [("input_ids", TensorProto.INT64, ["B", "T"]),
                                  ("attention_mask", TensorProto.INT64, ["B", "T"])],
                          [("y", TensorProto.FLOAT, ["B", "T", 4])], [emb, axes], check=False)
    p = save(m, tmp_path / "m.onnx")
    res = verify_outputs(p)
    assert res["ok"] and res["inputs"] == {"input_ids": [2, 2], "attention_mask": [2, 2]}


def test_verify_unrunnable_file_exit_2(tmp_path, capsys):
    m = qdq_gemm()  # valid for onnx.checker (it does not know the domain), no kernel in onnxruntime
    m.graph.node[3].op_type, m.graph.node[3].domain = "NoSuchOp", "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    assert main([str(p), "--verify"]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime cannot load it" in err and len(err.strip().splitlines()) == 1


def test_values_stored_as_typed_fields_not_raw_bytes():
    """onnx.helper.make_tensor(raw=False) keeps FP8/FP16 bit patterns in int32_data: read those too."""
    m = qdq_gemm()
    w = [t for t in m.graph.initializer if t.name == "w"][0]
    vals = np.full(64 * 32, 0.5, np.float32)
    vals[:2] = np.nan
    w.CopyFrom(helper.make_tensor("w", TensorProto.FLOAT8E4M3FN, [64, 32], vals.tolist()))
    assert not w.raw_data and len(w.int32_data) == 64 * 32
    assert reasons(m) == ["fp8_nan_code"]
    m = qdq_gemm(extra_weight=np.ones((32, 16), np.float16))
    w2 = [t for t in m.graph.initializer if t.name == "w2"][0]
    vals = np.ones(32 * 16, np.float32)
    vals[5] = np.inf
    w2.CopyFrom(helper.make_tensor("w2", TensorProto.FLOAT16, [32, 16], vals.astype(np.float16).tolist()))
    assert not w2.raw_data and reasons(m) == ["fp16_inf"]
