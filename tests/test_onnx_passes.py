"""Each onnx_post pass on a small graph: what it rewrites, how often it fires, and that onnxruntime agrees before/after."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_graphs import FP16, apply, const, fp8_zero, model, ops, run
from onnx_post.passes.attention import move_scale_before_q, move_transpose_before_qdq
from onnx_post.passes.casts import fold_cast_round_trips, remove_noop_casts
from onnx_post.passes.masks import remove_zero_masks
from onnx_post.passes.weights import fold_weight_quantize, pretranspose_weights, unshare_weight_dq

rng = np.random.default_rng(0)
X = rng.standard_normal((2, 8, 32)).astype(np.float16)


def _linear_graph(gemm=False):
    """x -> Q/DQ -> MatMul(., Transpose(DQ(Q(W))))  (what the exporter writes for nn.Linear)."""
    w = (rng.standard_normal((16, 32)) * 0.1).astype(np.float16)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zp"], ["xd"]),
        helper.make_node("QuantizeLinear", ["w", "sw", "zp"], ["wq"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zp"], ["wd"]),
    ]
    if gemm:
        nodes.append(helper.make_node("Gemm", ["xd", "wd"], ["y"], transB=1))
        shape_in, shape_out = [8, 32], [8, 16]
    else:
        nodes += [helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["xd", "wt"], ["y"])]
        shape_in, shape_out = [2, 8, 32], [2, 8, 16]
    inits = [const("w", w), const("sx", np.float16(0.01)), const("sw", np.float16(0.001)), fp8_zero()]
    return model(nodes, [("x", FP16, shape_in)], [("y", FP16, shape_out)], inits)


def _same(before, after, feed):
    a, b = run(before, feed)[0], run(after, feed)[0]
    assert np.array_equal(a, b), np.abs(a.astype(np.float32) - b.astype(np.float32)).max()


def test_weights_become_pretransposed_fp8_initializers():
    m = _linear_graph()
    out, counts = apply(m, [fold_weight_quantize, pretranspose_weights])
    assert counts == {"fold_weight_quantize": 1, "pretranspose_weights": 1}
    assert ops(out) == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "MatMul"]
    w = next(i for i in out.graph.initializer if i.data_type == TensorProto.FLOAT8E4M3FN and i.dims)
    assert list(w.dims) == [32, 16]  # W^T: DQ feeds MatMul directly
    _same(m, out, {"x": X})


def test_gemm_transb_is_folded_into_the_weight():
    m = _linear_graph(gemm=True)
    out, counts = apply(m, [fold_weight_quantize, pretranspose_weights])
    assert counts["pretranspose_weights"] == 1
    gemm = next(n for n in out.graph.node if n.op_type == "Gemm")
    assert next(a.i for a in gemm.attribute if a.name == "transB") == 0
    _same(m, out, {"x": X[0]})


def test_fold_weight_quantize_halves_the_weight_bytes():
    m = _linear_graph()
    out, _ = apply(m, [fold_weight_quantize])
    size = lambda mm: sum(len(i.raw_data) for i in mm.graph.initializer)  # noqa: E731
    assert size(out) < 0.55 * size(m)


def test_shared_weight_dq_is_split_before_pretransposing():
    w = (rng.standard_normal((16, 16)) * 0.1).astype(np.float16)
    nodes = [helper.make_node("QuantizeLinear", ["w", "sw", "zp"], ["wq"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zp"], ["wd"]),
             helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["a"]), helper.make_node("MatMul", ["x", "wd"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    m = model(nodes, [("x", FP16, [4, 16])], [("y", FP16, [4, 16])],
              [const("w", w), const("sw", np.float16(0.001)), fp8_zero()])
    out, counts = apply(m, [fold_weight_quantize, unshare_weight_dq, pretranspose_weights])
    assert counts == {"fold_weight_quantize": 1, "unshare_weight_dq": 1, "pretranspose_weights": 1}
    assert ops(out).count("DequantizeLinear") == 2 and "Transpose" not in ops(out)
    _same(m, out, {"x": X[0, :4, :16]})


def test_zero_mask_add_is_removed_and_real_mask_kept():
    scores = [("s", FP16, [2, 4, 8, 8])]
    for cond, expect in ((True, 1), (False, 0)):
        nodes = [helper.make_node("Expand", ["cond", "shape"], ["c"]),
                 helper.make_node("Where", ["c", "zeros", "neg"], ["mask"]),
                 helper.make_node("Add", ["s", "mask"], ["a"]), helper.make_node("Softmax", ["a"], ["y"], axis=-1)]
        inits = [const("cond", np.full((1, 1, 1, 8), cond)), const("shape", np.array([2, 1, 8, 8])),
                 const("zeros", np.float16(0)), const("neg", np.float16(-65504))]
        m = model(nodes, scores, [("y", FP16, [2, 4, 8, 8])], inits)
        out, counts = apply(m, [remove_zero_masks])
        assert counts == {"remove_zero_masks": expect}
        assert ("Add" in ops(out)) == (expect == 0)
        feed = {"s": rng.standard_normal((2, 4, 8, 8)).astype(np.float16)}
        _same(m, out, feed)


def test_softmax_cast_round_trip_runs_in_fp16():
    nodes = [helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.FLOAT),
             helper.make_node("Softmax", ["s32"], ["p32"], axis=-1),
             helper.make_node("Cast", ["p32"], ["p"], to=FP16), helper.make_node("Cast", ["p"], ["y"], to=FP16)]
    m = model(nodes, [("s", FP16, [2, 8])], [("y", FP16, [2, 8])], [])
    out, counts = apply(m, [remove_noop_casts, fold_cast_round_trips])
    assert counts == {"remove_noop_casts": 1, "fold_cast_round_trips": 1}
    assert ops(out) == ["Softmax"]
    feed = {"s": rng.standard_normal((2, 8)).astype(np.float16)}
    np.testing.assert_allclose(run(m, feed)[0], run(out, feed)[0], atol=1e-3)  # fp16 vs fp32 softmax rounding


def _bmm1_graph(op, c):
    """MatMul(DQ(Q(q)), DQ(Q(k^T))) * c -> Softmax: the scale after BMM1."""
    nodes = [helper.make_node("QuantizeLinear", ["q", "sq", "zp"], ["qq"]),
             helper.make_node("DequantizeLinear", ["qq", "sq", "zp"], ["qd"]),
             helper.make_node("QuantizeLinear", ["k", "sk", "zp"], ["kq"]),
             helper.make_node("DequantizeLinear", ["kq", "sk", "zp"], ["kd"]),
             helper.make_node("MatMul", ["qd", "kd"], ["s"]), helper.make_node(op, ["s", "c"], ["sc"]),
             helper.make_node("Softmax", ["sc"], ["y"], axis=-1)]
    inits = [const("sq", np.float16(0.01)), const("sk", np.float16(0.01)), const("c", np.float16(c)), fp8_zero()]
    return model(nodes, [("q", FP16, [1, 2, 8, 16]), ("k", FP16, [1, 2, 16, 8])], [("y", FP16, [1, 2, 8, 8])], inits)


@pytest.mark.parametrize("op,c", [("Mul", 0.25), ("Div", 4.0), ("Mul", 0.125)])
def test_scale_moves_before_q_with_the_q_scale_adjusted(op, c):
    m = _bmm1_graph(op, c)
    out, counts = apply(m, [move_scale_before_q])
    assert counts == {"move_scale_before_q": 1}
    scale_op = next(n for n in out.graph.node if n.op_type == op)
    assert scale_op.input[0] == "q"
    q = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == scale_op.output[0])
    assert ops(out)[-2:] == ["MatMul", "Softmax"]  # nothing left between BMM1 and Softmax
    s = onnx.numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == q.input[1]))
    assert s == np.float16(0.01 * (c if op == "Mul" else 1 / c))  # the tensor is x*c, so is its scale
    feed = {"q": rng.standard_normal((1, 2, 8, 16)).astype(np.float16),
            "k": rng.standard_normal((1, 2, 16, 8)).astype(np.float16)}
    # Powers of two keep every FP8 code identical: outputs agree bit for bit.
    _same(m, out, feed)


def test_scale_is_not_moved_without_a_q_side_quantizer():
    m = _bmm1_graph("Mul", 0.25)
    g = m.graph
    # Feed the MatMul straight from the graph input q: nothing to re-scale, so the pass must not fire.
    g.node[4].input[0] = "q"
    out, counts = apply(m, [move_scale_before_q])
    assert counts == {"move_scale_before_q": 0}


def test_transpose_moves_above_qdq():
    nodes = [helper.make_node("QuantizeLinear", ["k", "sk", "zp"], ["kq"]),
             helper.make_node("DequantizeLinear", ["kq", "sk", "zp"], ["kd"]),
             helper.make_node("Transpose", ["kd"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["y"])]
    m = model(nodes, [("q", FP16, [1, 2, 8, 16]), ("k", FP16, [1, 2, 8, 16])], [("y", FP16, [1, 2, 8, 8])],
              [const("sk", np.float16(0.01)), fp8_zero()])
    out, counts = apply(m, [move_transpose_before_qdq])
    assert counts == {"move_transpose_before_qdq": 1}
    assert ops(out) == ["Transpose", "QuantizeLinear", "DequantizeLinear", "MatMul"]
    feed = {"q": rng.standard_normal((1, 2, 8, 16)).astype(np.float16),
            "k": rng.standard_normal((1, 2, 8, 16)).astype(np.float16)}
    _same(m, out, feed)


def test_onnxruntime_session_avoids_relu_quant_rewrite_on_fp8():
    """Relu -> Q(FP8) -> DQ: onnxruntime's ReluQuantRewrite would drop the Relu (valid for uint8, not signed FP8)."""
    from fxq.verify import onnx_session

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])]
    m = model(nodes, [("x", TensorProto.FLOAT, [64])], [("y", TensorProto.FLOAT, [64])],
              [const("s", np.float32(0.01)), fp8_zero()])
    x = rng.standard_normal(64).astype(np.float32)
    y = onnx_session(m.SerializeToString(), optimize=True).run(None, {"x": x})[0]
    assert (y >= 0).all() and (y[x < 0] == 0).all()


@pytest.mark.parametrize("src,mid,expect", [(FP16, TensorProto.FLOAT, 1), (TensorProto.FLOAT, FP16, 0)])
def test_only_widening_cast_round_trips_are_removed(src, mid, expect):
    """f16 -> f32 -> f16 is exact and goes; f32 -> f16 -> f32 rounds, so it must stay."""
    nodes = [helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("Cast", ["p"], ["w"], to=mid),
             helper.make_node("Cast", ["w"], ["c"], to=src), helper.make_node("Relu", ["c"], ["y"])]
    m = model(nodes, [("s", src, [2, 8])], [("y", src, [2, 8])], [])
    from onnx_post.passes.casts import remove_widening_round_trips

    out, counts = apply(m, [remove_widening_round_trips])
    assert counts == {"remove_widening_round_trips": expect}
    assert ops(out).count("Cast") == 2 - 2 * expect
    dtype = np.float16 if src == FP16 else np.float32
    feed = {"s": (rng.standard_normal((2, 8)) * 3).astype(dtype)}
    _same(m, out, feed)


@pytest.mark.parametrize("second,expect_ops", [([0, 1, 3, 2], ["Transpose", "Relu"]), ([0, 2, 1, 3], ["Relu"])])
def test_transpose_pairs_fuse(second, expect_ops):
    from onnx_post.passes.transposes import fuse_transpose_pairs

    nodes = [helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["a"], ["b"], perm=second), helper.make_node("Relu", ["b"], ["y"])]
    out_shape = [2, 4, 16, 8] if second == [0, 1, 3, 2] else [2, 8, 4, 16]
    m = model(nodes, [("x", FP16, [2, 8, 4, 16])], [("y", FP16, out_shape)], [])
    out, counts = apply(m, [fuse_transpose_pairs])
    assert counts == {"fuse_transpose_pairs": 1} and ops(out) == expect_ops
    _same(m, out, {"x": rng.standard_normal((2, 8, 4, 16)).astype(np.float16)})
