"""The checker on hostile and invalid files (issue 15): it reads nothing outside the model's folder,
refuses devices and FIFOs before reading, reports invalid graphs as invalid, sees GEMMs in subgraphs
and functions, caps --verify's inputs, and counts fxq's float-by-design attention as skipped.
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from checker_graphs import attention_model
from onnx_post.check_cli import main
from onnx_post.checker import REASONS, InvalidModelError, check_model
from tests.test_checker_numeric import FP8, qdq_gemm, save

F32 = TensorProto.FLOAT


def _one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    return err


# -- external data ----------------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    """model/m.onnx with its weights in model/m.onnx.data, and a secret file outside model/."""
    (tmp_path / "model").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.bin").write_bytes(bytes([0x38]) * 8192)  # valid FP8 codes: readable as w
    return tmp_path


def _point(folder, **entries) -> str:
    """Save the model with tensor w's external-data entries replaced by `entries`; returns the path."""
    path = save(qdq_gemm(), folder / "model" / "m.onnx", external=True)
    m = onnx.load(str(path), load_external_data=False)
    (w,) = [t for t in m.graph.initializer if t.name == "w"]
    info = {e.key: e.value for e in w.external_data} | entries
    del w.external_data[:]
    for k, v in info.items():
        w.external_data.add(key=k, value=v)
    path.write_bytes(m.SerializeToString())
    return str(path)


@pytest.mark.parametrize("location,what", [
    ("ABSOLUTE", "absolute external-data location"),
    ("../outside/secret.bin", "location with '..'"),
    ("sub/../../outside/secret.bin", "location with '..'"),
])
def test_external_data_outside_the_folder_is_refused(folder, capsys, location, what):
    if location == "ABSOLUTE":
        location = str(folder / "outside" / "secret.bin")
    path = _point(folder, location=location, offset="0")
    assert main([path]) == 2
    err = _one_line_error(capsys)
    assert what in err and "'w'" in err and "inside the model's folder" in err


@pytest.mark.parametrize("link", ["file", "folder"])
def test_external_data_through_a_symlink_is_refused(folder, capsys, link):
    if link == "file":
        os.symlink(folder / "outside" / "secret.bin", folder / "model" / "w.data")
        location = "w.data"
    else:
        os.symlink(folder / "outside", folder / "model" / "sub")
        location = "sub/secret.bin"
    path = _point(folder, location=location, offset="0")
    assert main([path]) == 2
    assert "through a symlink" in _one_line_error(capsys)
    with pytest.raises(OSError, match="through a symlink"):
        check_model(path)


@pytest.mark.parametrize("key,value", [("offset", "-16"), ("offset", "abc"), ("length", "1e3"), ("length", "-1"),
                                       ("offset", "99999999999999999999999")])
def test_external_data_offset_and_length_must_be_non_negative_integers(folder, capsys, key, value):
    path = _point(folder, **{key: value})
    assert main([path]) == 2
    err = _one_line_error(capsys)
    assert f"external-data {key}" in err and "not a non-negative integer" in err


def test_huge_length_does_not_reveal_a_file_size(folder, capsys):
    """Pointing at m.onnx itself with a huge length: the message must not name how large m.onnx is."""
    path = _point(folder, location="m.onnx", offset="0", length=str(10**15))
    size = os.path.getsize(path)
    assert main([path]) == 2
    err = _one_line_error(capsys)
    assert str(size) not in err and "2048" in err  # the tensor's own byte count, which the model states anyway
    path = _point(folder, location="m.onnx", offset=str(10**15), length="2048")
    assert main([path]) == 2
    err = _one_line_error(capsys)
    assert "truncated" in err and str(os.path.getsize(path)) not in err


def test_safe_external_data_still_reads(folder):
    path = save(qdq_gemm(), folder / "model" / "m.onnx", external=True)
    rep = check_model(path)
    assert rep.ready and [g.ready for g in rep.gemms] == [True]


# -- files that are not regular files ------------------------------------------------------------------
def test_dev_zero_is_refused_before_reading(capsys):
    assert main(["/dev/zero"]) == 2
    assert "not a regular file" in _one_line_error(capsys)


def test_fifo_is_refused_without_hanging(tmp_path, capsys):
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    assert main([str(fifo)]) == 2
    assert "not a regular file" in _one_line_error(capsys)


def test_file_beyond_protobuf_size_is_refused_before_reading(tmp_path, capsys):
    big = tmp_path / "m.onnx"
    with open(big, "wb") as f:  # sparse: no disk used
        f.truncate(2**31 + 1)
    assert main([str(big)]) == 2
    assert "more than the 2 GiB" in _one_line_error(capsys)


# -- invalid graphs ------------------------------------------------------------------------------
def test_graph_with_a_cycle_is_invalid(tmp_path, capsys):
    m = qdq_gemm(dtype=np.float32)
    # a -> Relu -> b -> Add(x, b) -> a: a cycle next to a ready GEMM (which alone made it "1/1 ready")
    m.graph.node.extend([helper.make_node("Add", ["x", "b"], ["a"], name="add"),
                         helper.make_node("Relu", ["a"], ["b"], name="relu")])
    m.graph.output.append(helper.make_tensor_value_info("b", F32, ["N", 8, 64]))
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    assert main([str(p), "--strict"]) == 2
    err = _one_line_error(capsys)
    assert "is not a valid ONNX graph" in err and "topologically sorted" in err
    with pytest.raises(InvalidModelError):
        check_model(m)


# -- subgraphs and functions -----------------------------------------------------------------------
def _qdq_matmul_nodes(prefix: str, x: str, y: str) -> list[onnx.NodeProto]:
    """x -> Q/DQ -> MatMul <- DQ <- FP8 weight, all from Constant nodes (usable in a branch or function body)."""
    c = lambda n, v: helper.make_node("Constant", [], [prefix + n], value=numpy_helper.from_array(v, prefix + n))  # noqa: E731
    p = prefix
    return [c("xs", np.array(1 / 64, np.float32)), c("ws", np.array(0.01, np.float32)), c("zp", np.zeros((), FP8)),
            c("w", np.full((64, 32), 0.5, FP8)),
            helper.make_node("QuantizeLinear", [x, p + "xs", p + "zp"], [p + "xq"]),
            helper.make_node("DequantizeLinear", [p + "xq", p + "xs", p + "zp"], [p + "xd"]),
            helper.make_node("DequantizeLinear", [p + "w", p + "ws", p + "zp"], [p + "wd"]),
            helper.make_node("MatMul", [p + "xd", p + "wd"], [y], name=p + "gemm")]


def test_gemm_inside_an_if_branch_is_checked():
    out = [helper.make_tensor_value_info("t", F32, [32, 32])]
    then = helper.make_graph(_qdq_matmul_nodes("then_", "x", "t"), "then", [], out)
    other = helper.make_graph([helper.make_node("MatMul", ["x", "w_float"], ["t2"], name="else_gemm")], "else", [],
                              [helper.make_tensor_value_info("t2", F32, [32, 32])])
    g = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)], "g",
                          [helper.make_tensor_value_info("x", F32, [32, 64]),
                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", F32, [32, 32])],
                          [numpy_helper.from_array(np.ones((64, 32), np.float32), "w_float")])
    rep = check_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    assert sorted((r.name, r.ready, tuple(r.reasons)) for r in rep.gemms) == [
        ("else_gemm", False, ("input_a_not_dq", "input_b_not_dq")), ("then_gemm", True, ())]


def test_gemm_inside_a_model_local_function_is_checked():
    f = helper.make_function("local", "QLinear", ["x"], ["y"], _qdq_matmul_nodes("f_", "x", "y"),
                             [helper.make_opsetid("", 21)])
    g = helper.make_graph([helper.make_node("QLinear", ["x"], ["y"], domain="local")], "g",
                          [helper.make_tensor_value_info("x", F32, [8, 64])],
                          [helper.make_tensor_value_info("y", F32, [8, 32])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("local", 1)],
                          ir_version=10, functions=[f])
    rep = check_model(m)
    assert [(r.name, r.ready, r.reasons) for r in rep.gemms] == [("f_gemm", True, [])]


# -- --verify input cap ----------------------------------------------------------------------------
def test_verify_refuses_inputs_too_large_to_generate(tmp_path, capsys):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", F32, [60000, 60000, 4])],
                          [helper.make_tensor_value_info("y", F32, [60000, 60000, 4])])
    p = save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), tmp_path / "m.onnx")
    assert main([str(p), "--verify"]) == 2
    err = _one_line_error(capsys)
    assert "input 'x' of shape [60000, 60000, 4]" in err and "at most 1 GiB" in err


# -- design skips ----------------------------------------------------------------------------------
def test_float_attention_outside_the_head_window_is_skipped_by_design(tmp_path, capsys):
    """fxq leaves such a block in float (Q/K/V and probs unquantized): skipped, and --strict passes."""
    m = attention_model(break_="float", head=8)
    (blk,) = check_model(m).attention
    assert (blk.ready, blk.skipped, blk.reasons) == (False, True, ["head_size_out_of_window"])
    p = save(m, tmp_path / "m.onnx")
    assert main([str(p), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "1 skipped (float by design" in out and "GEMMs: 1/3 ready (both inputs DQ), 2 skipped" in out
    (blk,) = check_model(attention_model(head=8)).attention  # FP8 in the block: a TensorRT problem, not a skip
    assert (blk.ready, blk.skipped, blk.reasons) == (False, False, ["head_size_out_of_window"])


# -- help layout -----------------------------------------------------------------------------------
def test_help_separates_every_reason_code_from_its_text(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in REASONS:
        assert re.search(rf"^  {code}\s+\S", out, re.M), f"{code} runs into its text"


def test_external_data_in_a_branch_constant_is_checked_too(tmp_path):
    from onnx_post.external_data import ExternalDataError, check_external_data

    value = numpy_helper.from_array(np.ones(4, np.float32), "c")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="../outside.bin")
    then = helper.make_graph([helper.make_node("Constant", [], ["t"], value=value)], "then", [],
                             [helper.make_tensor_value_info("t", F32, [4])])
    g = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=then)], "g",
                          [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", F32, [4])])
    with pytest.raises(ExternalDataError, match="location with '..'"):
        check_external_data(helper.make_model(g), str(tmp_path))
