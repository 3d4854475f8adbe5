"""FP8 weight rounding (GPTQ vs round-to-nearest), Hessian observers, per-channel FP8 weights end to end."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import fxq
from fxq.conversion import ops
from fxq.accuracy import weight_rounding as wr
from fxq.capture.program import Inputs, capture_program
from fxq.conversion.graph_dtype import program_in_dtype
from fxq.calibration.hessian import HessianObserver, insert_hessian_observers, weight_hessians
from fxq.conversion.insert import insert_observers, remove_observers
from fxq.placement.place import place
from fxq.verify import onnx_session
from onnx_post import fp8
from onnx_post.checker import check_model
from onnx_post.passes.weights import pretranspose_weights
from onnx_graphs import FP16, apply, const, model, run
from tiny_models import DIM, SEQ, TinyAttention

NAN_CODES = {0x7F, 0xFF}  # float8_e4m3fn NaN


def _correlated_inputs(tokens, k, seed):
    """Activations like a transformer's: correlated channels, a few outlier channels, nonzero mean."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g) @ torch.randn(k, k, generator=g) / k ** 0.5
    x[:, :3] *= 8
    return x + 0.3


def _valid_codes(codes):
    assert codes.dtype == torch.float8_e4m3fn
    assert not set(codes.view(torch.uint8).unique().tolist()) & NAN_CODES
    assert codes.float().abs().max() <= 448


@pytest.mark.parametrize("n,k,seed", [(32, 64, 0), (96, 48, 1), (64, 160, 2), (17, 300, 3)])
@pytest.mark.parametrize("axis", [None, 0])
def test_gptq_never_increases_gemm_output_error(n, k, seed, axis):
    x = _correlated_inputs(4 * k, k, seed)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(100 + seed)) * 0.05
    h = x.double().T @ x.double()
    s = wr.weight_scale(w, axis)
    err = lambda c: float(torch.linalg.norm(x.double() @ (w.double() - wr.dequantize(c, s).double()).T))  # noqa: E731
    rtn = wr.round_nearest(w, s)
    for act_order in (False, True):
        gptq = wr.gptq_fp8(w, h, s, block_size=32, act_order=act_order)
        _valid_codes(gptq)
        assert err(gptq) <= err(rtn) * (1 + 1e-9)
        assert err(gptq) < 0.9 * err(rtn)  # and it does compensate: >= 10% less output error here
        # Same scale: the chosen values are on the grid of s, so re-rounding them changes nothing.
        assert torch.equal(wr.round_nearest(wr.dequantize(gptq, s), s).view(torch.uint8), gptq.view(torch.uint8))


def test_codes_saturate_and_are_never_nan():
    # A weight at the top of the range: GPTQ's error feedback pushes neighbours past 448 and must saturate.
    k = 64
    x = _correlated_inputs(256, k, 5)
    w = torch.full((8, k), 1.0)
    w[:, ::2] = 448.0
    codes = wr.gptq_fp8(w, x.double().T @ x.double(), torch.tensor(1.0))
    _valid_codes(codes)
    assert codes.float().abs().max() == 448
    with pytest.raises(ValueError, match="NaN or inf"):
        wr.round_nearest(torch.tensor([[float("nan"), 1.0]]), 1.0)
    with pytest.raises(ValueError, match="per-output-channel"):
        wr.round_nearest(torch.ones(4, 8), torch.ones(8))


def test_round_nearest_is_what_quantize_linear_computes():
    w = torch.randn(64, 32) * 0.1
    s = wr.weight_scale(w)
    assert torch.equal(wr.round_nearest(w, s).view(torch.uint8), ops.quantize_to_fp8(w, float(s)).view(torch.uint8))
    per_ch = wr.weight_scale(w, axis=0)
    assert per_ch.shape == (64,)
    codes = wr.round_nearest(w, per_ch)
    assert torch.equal(codes.float().abs().amax(dim=1), torch.full((64,), 448.0))  # each row reaches 448


def test_hessian_observer_matches_x_transpose_x_and_is_shared_by_qkv():
    m = TinyAttention("sdpa").eval()
    example = Inputs.of((torch.randn(2, SEQ, DIM),))
    ep = capture_program(m, example, True, False, None)
    placement = place(ep.graph_module)
    amax_obs = insert_observers(ep.graph_module, placement)
    obs = insert_hessian_observers(ep.graph_module, placement)
    batches = [torch.randn(3, SEQ, DIM) for _ in range(2)]
    runnable = ep.module()
    with torch.no_grad():
        for b in batches:
            runnable(b)
    assert remove_observers(ep.graph_module) == len(amax_obs) + 4  # LN1 (q, k, v), attention out, LN2, GELU
    assert len({id(o) for v in obs.values() for o in v}) == 4
    assert obs["q:linear.weight"][0] is obs["k:linear.weight"][0] is obs["v:linear.weight"][0]
    stats = weight_hessians(obs)
    x = torch.cat([m.norm(b).reshape(-1, DIM) for b in batches]).double()
    torch.testing.assert_close(stats["q:linear.weight"].hessian, x.T @ x, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats["q:linear.weight"].mean, x.mean(0), rtol=1e-5, atol=1e-6)
    assert stats["q:linear.weight"].tokens == 2 * 3 * SEQ


def test_tied_weight_sums_its_readers_hessians():
    a, b, c = HessianObserver("a"), HessianObserver("b"), HessianObserver("c")
    xa, xb = torch.randn(5, 8), torch.randn(7, 8)
    a(xa), b(xb), c(torch.randn(3, 4))
    stats = weight_hessians({"tied": [a, b], "one": [a, a], "w_and_wt": [a, c]})
    torch.testing.assert_close(stats["tied"].hessian, (xa.T @ xa + xb.T @ xb).double())
    assert stats["tied"].tokens == 12 and stats["one"].tokens == 5  # one observer counted once
    assert "w_and_wt" not in stats  # K differs between readers: that weight is rounded to nearest


def test_quantize_with_gptq_stores_the_gptq_codes():
    m = TinyAttention("sdpa").eval()
    example = (torch.randn(2, SEQ, DIM),)
    calib = [(torch.randn(4, SEQ, DIM),) for _ in range(2)]
    near = fxq.quantize(m, example, calib, progress=False)
    gptq = fxq.quantize(m, example, calib, fxq.QuantConfig(weight_rounding="gptq"), progress=False)
    rows = [m.norm(b[0]).reshape(-1, DIM).detach() for b in calib]
    hessian = sum((r.T @ r).double() for r in rows)  # as HessianObserver sums it: GPTQ's choices near ties follow H's bits
    w = m.q.weight.detach()
    s = ops.weight_scale_from_amax(float(w.abs().max()))  # the weight's scale: amax / 448, portable
    want = wr.gptq_fp8(w, hessian, s, act_order=True)
    got = gptq.program.state_dict["q.weight_fp8"]
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert not torch.equal(got.view(torch.uint8), near.program.state_dict["q.weight_fp8"].view(torch.uint8))
    assert gptq.amax == near.amax  # same scales: only the choice of FP8 value changed
    with pytest.raises(fxq.CalibrationError, match="needs calib_data"):
        fxq.quantize(m, example, config=fxq.QuantConfig(weight_rounding="gptq"), calibration={"amax": near.amax},
                     progress=False)


def test_config_fields_validate_and_round_trip():
    cfg = fxq.QuantConfig(weight_rounding="gptq", weight_axis=0)
    assert fxq.QuantConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="weight_rounding must be one of"):
        fxq.QuantConfig(weight_rounding="GPTQ")
    for bad in (1, -1, True, "0"):
        with pytest.raises(ValueError, match="weight_axis must be None"):
            fxq.QuantConfig(weight_axis=bad)


class _XW(torch.nn.Module):
    """x @ W with W stored [K, N] (HF Conv1D's layout): output channels are W's axis 1."""

    def __init__(self):
        super().__init__()
        self.block = TinyAttention("sdpa")
        self.w = torch.nn.Parameter(torch.randn(DIM, 32) * torch.logspace(-2, 0, 32))

    def forward(self, x):
        return self.block(x) @ self.w


@pytest.fixture(scope="module")
def per_channel(tmp_path_factory):
    torch.manual_seed(0)
    m = _XW().eval()
    example = (torch.randn(2, SEQ, DIM),)
    calib = [(torch.randn(4, SEQ, DIM),) for _ in range(2)]
    qm = fxq.quantize(m, example, calib, fxq.QuantConfig(weight_axis=0), progress=False)
    d = tmp_path_factory.mktemp("per_channel")
    return m, qm, {dt: qm.export_onnx(d / f"m_{dt}.onnx", dtype=dt) for dt in (torch.float32, torch.float16)}


def test_per_channel_weights_in_the_program(per_channel):
    m, qm, _ = per_channel
    state = qm.program.state_dict
    assert state["block.q.weight_fp8_scale"].shape == (DIM,)  # W[N, K]: one scale per row
    assert state["w_fp8_scale"].shape == (32,)  # W[K, N]: one scale per column
    # max |column| / 448, rounded up to what every graph dtype stores exactly: a normal FP16 number with
    # bf16's 8 significant bits (the ONNX scale is stored in the graph dtype)
    raw = m.w.detach().abs().amax(dim=0) / 448
    want = fp8.portable_scale(raw)
    assert want.min() == torch.finfo(torch.float16).tiny > raw.min()  # the smallest column is clamped here
    assert (want >= raw).all() and (want < raw.clamp(min=torch.finfo(torch.float16).tiny) * (1 + 2 ** -7)).all()
    torch.testing.assert_close(state["w_fp8_scale"], want, rtol=0, atol=0)
    assert all(fp8.stored_scale(v, dt) == v for v in want.tolist() for dt in (torch.float16, torch.bfloat16))
    axes = [n.args[2] for n in qm.program.graph.nodes if n.target is torch.ops.fxq.fp8_dequant_axis.default]
    assert sorted(axes) == [0] * 6 + [1]


def test_per_channel_export_matches_torch_and_is_ready(per_channel):
    m, qm, results = per_channel
    x = torch.randn(3, SEQ, DIM)
    for dtype, res in results.items():
        want = program_in_dtype(qm.program, dtype).module()(x.to(dtype)).detach().float()  # torch fake-quant
        proto = onnx.load(str(res.path))
        onnx.checker.check_model(proto, full_check=True)
        inits = {i.name: i for i in proto.graph.initializer}
        dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
        assert len(dqs) == 7  # every GEMM weight, pre-transposed to W^T[K, N]: channels on axis 1
        assert all(next(a.i for a in d.attribute if a.name == "axis") == 1 for d in dqs)
        elem = TensorProto.FLOAT if dtype == torch.float32 else TensorProto.FLOAT16
        assert all(inits[d.input[1]].data_type == elem and len(inits[d.input[1]].dims) == 1 for d in dqs)
        assert res.post_counts["pretranspose_weights"] == 6  # the x @ W weight is already [K, N]
        sess = onnx_session(res.path)
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.to(dtype).numpy()})[0]).float()
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        assert cos > 0.9999, cos
        r = check_model(res.path)
        assert all(g.ready or g.skipped for g in r.gemms) and sum(g.ready for g in r.gemms) == 7, r.summary()  # Q@K^T, P@V: N = 8
        assert all(a.ready for a in r.attention)


def _weight_graph(scale_shape, axis, activation_scale_shape=()):
    """x -> DQ(Q(x)) -> MatMul(., DQ(W^T fp8, axis)) with chosen scale shapes."""
    rng = np.random.default_rng(0)
    wt = (rng.standard_normal((32, 16)) * 0.1).astype(np.float32)
    sw = np.full(scale_shape, 0.002, np.float16)
    codes = helper.make_tensor("wq", TensorProto.FLOAT8E4M3FN, wt.shape,
                               ops.quantize_to_fp8(torch.from_numpy(wt), 0.002).view(torch.uint8).numpy().tobytes(),
                               raw=True)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=axis),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    zx = helper.make_tensor("zx", TensorProto.FLOAT8E4M3FN, list(activation_scale_shape),
                            [0] * int(np.prod(activation_scale_shape)))
    zw = helper.make_tensor("zw", TensorProto.FLOAT8E4M3FN, list(scale_shape), [0] * int(np.prod(scale_shape)))
    inits = [codes, const("sw", sw), const("sx", np.full(activation_scale_shape, 0.01, np.float16)), zx, zw]
    return model(nodes, [("x", FP16, [2, 8, 32])], [("y", FP16, [2, 8, 16])], inits)


def test_checker_accepts_per_channel_weights_only_along_n():
    ready = check_model(_weight_graph((16,), axis=1)).gemms[0]
    assert ready.ready, ready.reasons
    along_k = check_model(_weight_graph((32,), axis=0)).gemms[0]
    assert along_k.reasons == ["weight_scale_not_per_channel"]
    act = check_model(_weight_graph((16,), axis=1, activation_scale_shape=(32,))).gemms[0]
    assert act.reasons == ["activation_not_per_tensor"]


def test_pretranspose_moves_the_per_channel_axis():
    # W[N, K] -> DQ(axis 0) -> Transpose -> MatMul, as the exporter writes a per-channel nn.Linear weight.
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((16, 32)) * np.logspace(-2, 0, 16)[:, None]).astype(np.float32)
    s = (np.abs(w).max(axis=1) / 448).astype(np.float16)
    codes = wr.round_nearest(torch.from_numpy(w), torch.from_numpy(s.astype(np.float32)))
    wq = helper.make_tensor("wq", TensorProto.FLOAT8E4M3FN, w.shape, codes.view(torch.uint8).numpy().tobytes(), raw=True)
    zw = helper.make_tensor("zw", TensorProto.FLOAT8E4M3FN, [16], [0] * 16)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["y"])]
    m = model(nodes, [("x", FP16, [2, 8, 32])], [("y", FP16, [2, 8, 16])], [wq, const("sw", s), zw])
    out, counts = apply(m, [pretranspose_weights])
    assert counts == {"pretranspose_weights": 1}
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear")
    assert next(a.i for a in dq.attribute if a.name == "axis") == 1
    assert [n.op_type for n in out.graph.node] == ["DequantizeLinear", "MatMul"]
    x = np.random.default_rng(2).standard_normal((2, 8, 32)).astype(np.float16)
    assert np.array_equal(run(m, {"x": x})[0], run(out, {"x": x})[0])
    assert check_model(out).gemms[0].reasons == ["input_a_not_dq"]  # the weight side is fine
