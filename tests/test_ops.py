"""fxq.fp8_qdq computes exactly what ONNX QuantizeLinear -> DequantizeLinear (E4M3, saturating) computes."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import fxq  # noqa: F401
import onnx_graphs
from onnx_post import fp8
from fxq.conversion import ops


def _ort_qdq(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    zp = helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0])
    s = helper.make_tensor("s", elem, [], [float(scale)])
    model = onnx_graphs.model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                               helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])],
                              [("x", elem, list(x.shape))], [("y", elem, list(x.shape))], [zp, s])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_onnxruntime_bit_for_bit(dtype):
    x = torch.randn(100_000) * 3
    x[:10] = torch.tensor([0.0, -0.0, 1e-9, 447.9, 1e6, -1e6, 0.5, -0.5, 3.0, 1e-3])  # saturation, tiny, signs
    x = x.to(dtype)
    scale = 2.0 / 448 + 1e-7  # not representable in fp16: the op must round it as the graph will
    got = torch.ops.fxq.fp8_qdq(x, scale).numpy()
    want = _ort_qdq(x.numpy(), np.array(scale, dtype=x.numpy().dtype))
    assert got.dtype == want.dtype
    assert np.array_equal(got.view(np.uint16 if dtype == torch.float16 else np.uint32),
                          want.view(np.uint16 if dtype == torch.float16 else np.uint32))


def test_saturates_and_rounds_to_fp8_grid():
    y = ops.fp8_qdq_reference(torch.tensor([1000.0, -1000.0, 1.0, 1.06]), 1.0)
    assert y.tolist() == [448.0, -448.0, 1.0, 1.0]  # 1.06 rounds to 1.0 (E4M3 step at 1 is 0.125)


def test_zero_amax_gives_valid_scale():
    assert ops.scale_from_amax(0.0) == pytest.approx(1 / 448)
    s = ops.round_scale(1e-12, torch.float16)
    assert s.item() > 0 and torch.isfinite(s)


def test_single_node_through_export_and_decomposition():
    class M(torch.nn.Module):
        def forward(self, x):
            return torch.ops.fxq.fp8_qdq(x, 0.01) * 2

    ep = torch.export.export(M(), (torch.randn(4, 8),)).run_decompositions()
    qdq = [n for n in ep.graph.nodes if n.target is torch.ops.fxq.fp8_qdq.default]
    assert len(qdq) == 1


def test_straight_through_gradient():
    x = torch.randn(16, requires_grad=True)
    torch.ops.fxq.fp8_qdq(x, 0.01).sum().backward()
    assert torch.equal(x.grad, torch.ones(16))


def _qdq_by_conversion(x, scale):
    """fp8_qdq as quantize then dequantize through torch's own FP8 -> float conversion (before the CPU table)."""
    s = fp8.stored_scale(scale, x.dtype)
    return fp8.dequantize(fp8.quantize(x, s, chunk=None), s, x.dtype)


def _bits(t):
    return t.view({torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


def test_cpu_table_dequantize_is_the_conversion_bit_for_bit_over_the_float32_range():
    """Every float32 whose low 16 bits are one of a few patterns: every sign, exponent and leading 7 mantissa
    bits, so every E4M3 tie (the halfway bit lies in the top 16 bits at every FP8 exponent, subnormals included)
    and its neighbours, saturation, zeros, subnormal inputs, inf and NaN (with payloads). The whole float32 range,
    all 2^32 patterns, was compared once the same way (results/fallback_speed.md)."""
    high = torch.arange(1 << 16, dtype=torch.int64) << 16
    low = torch.tensor([0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x1234])
    x = (high[:, None] | low[None, :]).reshape(-1).to(torch.int32).view(torch.float32)  # wraps: negative patterns
    for scale in (1.0, 2.0 / 448 + 1e-7, 1e-30, 3e5):
        assert torch.equal(_bits(fp8.quantize_dequantize(x, scale)), _bits(_qdq_by_conversion(x, scale))), scale


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_table_dequantize_is_the_conversion_for_every_half_precision_value(dtype):
    x = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
    for scale in (1.0, 2.0 / 448 + 1e-7, 0.37):
        got = ops.fp8_qdq_reference(x, scale)
        assert got.dtype == dtype and torch.equal(_bits(got), _bits(_qdq_by_conversion(x, scale))), scale


def test_qdq_keeps_shape_strides_and_nan():
    x = torch.randn(3, 4, 5).transpose(0, 2)  # not contiguous
    x[0, 0, 0], x[1, 1, 1] = float("nan"), -float("inf")
    y = ops.fp8_qdq_reference(x, 0.01)
    assert y.shape == x.shape and torch.equal(_bits(y), _bits(_qdq_by_conversion(x, 0.01)))
    assert torch.isnan(y[0, 0, 0]) and y[1, 1, 1] == -448 * fp8.stored_scale(0.01, torch.float32)
