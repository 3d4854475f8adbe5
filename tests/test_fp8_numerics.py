"""onnx_post/fp8.py, the one FP8 module, against onnxruntime's QuantizeLinear / DequantizeLinear, bit for bit."""
import ml_dtypes
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from onnx_post import fp8
from tests.onnx_graphs import fp8_zero, model, run

E4M3 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # x * huge scales is inf, on purpose
FINITE = np.unique(E4M3[np.isfinite(E4M3)])  # the 253 distinct finite E4M3 values, sorted (+-0 once)


def _hard_values(rng) -> np.ndarray:
    """Every E4M3 value, every midpoint (ties), E4M3 subnormals, saturation, inf, and random values over 2^-40..2^20."""
    ties = (FINITE[1:] + FINITE[:-1]) / 2
    just = np.concatenate([np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    sub = rng.uniform(-2.0**-6, 2.0**-6, 5000)  # E4M3 subnormal range (|x| < 2^-6)
    sat = np.array([448, 449, 464, 465, 480, 1e6, 3e38, np.inf, -448, -464, -465, -1e6, -np.inf, 0.0, -0.0])
    wide = rng.standard_normal(50_000) * np.exp2(rng.uniform(-40, 20, 50_000))
    return np.concatenate([FINITE, ties, just, sub, sat, wide]).astype(np.float32)


def _ort(x: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, dequantized) from onnxruntime's QuantizeLinear and DequantizeLinear (opset 21, saturate=1)."""
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    s = helper.make_tensor("s", helper.np_dtype_to_tensor_dtype(scale.dtype), [], scale.reshape(1).tolist())
    m = model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
               helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])],
              [("x", elem, list(x.shape))], [("q", TensorProto.FLOAT8E4M3FN, list(x.shape)), ("y", elem, list(x.shape))],
              [s, fp8_zero()])
    q, y = run(m, {"x": x})
    return np.asarray(q).view(np.uint8), np.asarray(y)


@pytest.mark.parametrize("scale", [1.0, 2.0**-7, 0.013, 37.5])
def test_quantize_and_dequantize_match_onnxruntime_float32(scale):
    x = _hard_values(np.random.default_rng(0)) * np.float32(scale)
    s = np.array(fp8.stored_scale(scale, np.float32), np.float32)
    q, y = _ort(x, s)
    codes = fp8.quantize(x, s)
    assert codes.dtype == fp8.FP8_NUMPY
    assert np.array_equal(codes.view(np.uint8), q), f"{np.count_nonzero(codes.view(np.uint8) != q)} codes differ"
    got = fp8.dequantize(codes, s)
    assert np.array_equal(got.view(np.uint32), y.view(np.uint32))


@pytest.mark.parametrize("scale", [0.0123, 3e-7, 1e-9, 7e4])  # ordinary, fp16-subnormal, below it, past fp16 max
def test_fp16_scale_as_stored_matches_onnxruntime(scale):
    s = fp8.stored_scale_array(scale, np.float16)
    assert s.dtype == np.float16 and np.isfinite(s) and s >= np.finfo(np.float16).smallest_normal
    x = (_hard_values(np.random.default_rng(1)) * np.float32(s)).astype(np.float16)
    q, y = _ort(x, s)
    codes = fp8.quantize(x, s)
    assert np.array_equal(codes.view(np.uint8), q)
    got = fp8.dequantize(codes, s, np.float16)
    assert got.dtype == np.float16 and np.array_equal(got.view(np.uint16), y.view(np.uint16))


@pytest.mark.parametrize("scale", [0.0123, 1e-39, 5e38])
def test_bf16_scale_as_stored_matches_onnxruntime(scale):
    """onnxruntime's CPU provider has no BF16 Q/DQ: run the stored BF16 scale's exact value in a float32 graph."""
    s = fp8.stored_scale_array(scale, ml_dtypes.bfloat16)
    assert s.dtype == ml_dtypes.bfloat16 and np.isfinite(s.astype(np.float32))
    assert float(s) >= float(ml_dtypes.finfo(ml_dtypes.bfloat16).smallest_normal)
    x = _hard_values(np.random.default_rng(2)) * s.astype(np.float32)
    q, y = _ort(x, s.astype(np.float32))
    codes = fp8.quantize(x, s)
    assert np.array_equal(codes.view(np.uint8), q)
    assert np.array_equal(fp8.dequantize(codes, s).view(np.uint32), y.view(np.uint32))


def test_numpy_and_torch_paths_agree_bit_for_bit():
    x = _hard_values(np.random.default_rng(3)) * np.float32(0.02)
    for dtype, tdtype in ((np.float32, torch.float32), (np.float16, torch.float16)):
        xn = x.astype(dtype)
        xt = torch.from_numpy(xn)
        for s in (0.02, fp8.stored_scale(0.02, dtype)):
            qn, qt = fp8.quantize(xn, s), fp8.quantize(xt, s)
            assert qt.dtype == torch.float8_e4m3fn
            assert np.array_equal(qn.view(np.uint8), qt.view(torch.uint8).numpy())
            dn, dt = fp8.dequantize(qn, s, dtype), fp8.dequantize(qt, s, tdtype)
            assert np.array_equal(dn, dt.numpy())
    bf = torch.from_numpy(x).to(torch.bfloat16)
    qdq_t = fp8.quantize_dequantize(bf, 0.02)
    qdq_n = fp8.quantize_dequantize(bf.float().numpy().astype(ml_dtypes.bfloat16), 0.02)
    assert qdq_t.dtype == torch.bfloat16 and np.array_equal(qdq_t.float().numpy(), qdq_n.astype(np.float32))


def test_chunked_quantize_equals_whole():
    x = np.random.default_rng(4).standard_normal(10_007).astype(np.float32)
    whole = fp8.quantize(x, 0.01, chunk=None)
    assert np.array_equal(fp8.quantize(x, 0.01, chunk=1000).view(np.uint8), whole.view(np.uint8))
    t = torch.from_numpy(x).reshape(1, -1)
    assert np.array_equal(fp8.quantize(t, 0.01, chunk=1000).view(torch.uint8).numpy().ravel(), whole.view(np.uint8))


def test_scale_rule():
    assert fp8.scale_from_amax(448.0) == 1.0 and fp8.scale_from_amax(0.0) == 1 / 448
    assert np.array_equal(fp8.scale_from_amax(np.array([0.0, 4.48])), np.array([1 / 448, 0.01]))
    assert torch.equal(fp8.scale_from_amax(torch.tensor([0.0, 448.0])), torch.tensor([1 / 448, 1.0]))
    for bad in (float("nan"), -1.0, np.array([1.0, np.nan]), torch.tensor([-2.0])):
        with pytest.raises(ValueError, match="amax must be >= 0 and not NaN"):
            fp8.scale_from_amax(bad)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        fp8.stored_scale(float("nan"), np.float16)


def test_stored_scale_matches_torch_rounding():
    """fp16/bf16 rounding of the scale is torch's (through float32), so the torch op and the ONNX constant agree."""
    for scale in np.exp(np.random.default_rng(5).uniform(-9, 10, 2000)):
        for dtype in (torch.float16, torch.bfloat16):
            assert fp8.stored_scale(scale, dtype) == float(torch.tensor(float(scale), dtype=dtype))
