"""The searches' fused CPU Q/DQ (fxq/conversion/fused_qdq.py) computes what the eager op computes, bit for bit,
and the searches give the same numbers with it as without it."""
import shutil

import pytest
import torch

from fxq.accuracy.sensitivity import sensitivity
from fxq.conversion import fused_qdq
from fxq.conversion.fused_qdq import fused_cpu_qdq
from onnx_post import fp8
from tests.test_ops import _bits  # the integer view the eager op's own sweeps compare

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="torch.compile's CPU backend needs a C++ compiler")


def _fused(x, scale):
    with fused_cpu_qdq():
        assert fused_qdq.applies(x)
        y = torch.ops.fxq.fp8_qdq(x, scale)
    assert fused_qdq._compiled, "the fused Q/DQ gave up and fell back to the eager op"
    return y


def test_compiles_here():
    _fused(torch.randn(5000), 0.1)
    assert fused_qdq._compiled, "the fused Q/DQ fell back to eager on a machine with a C++ compiler"


def test_bit_for_bit_over_the_float32_range():
    """Every sign, exponent and leading 7 mantissa bits with a few low patterns: every E4M3 tie and its
    neighbours (the halfway bit lies in the top 16 bits at every FP8 exponent, subnormals included), saturation,
    zeros, subnormal inputs, inf and NaN with payloads."""
    high = torch.arange(1 << 16, dtype=torch.int64) << 16
    low = torch.tensor([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x1234])
    x = (high[:, None] | low[None, :]).reshape(-1).to(torch.int32).view(torch.float32)
    for scale in (1.0, 2.0 / 448 + 1e-7, 1e-30, 3e5, 0.37):
        assert torch.equal(_bits(_fused(x, scale)), _bits(fp8.quantize_dequantize(x, scale))), scale


def test_bit_for_bit_at_a_size_with_a_vector_tail():
    """4099 elements: the compiled loop's scalar tail and the eager conversion's, every value but NaN's sign (the
    eager float16 -> float32 conversion drops it in its scalar tail; fused keeps x's sign everywhere)."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = (torch.randn(4099) * 40).to(dtype)
        x[-5:] = torch.tensor([448.0, -480.0, 2.0 ** -7, -(2.0 ** -10), 0.0]).to(dtype)
        assert torch.equal(_bits(_fused(x, 0.37)), _bits(fp8.quantize_dequantize(x, 0.37))), dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bit_for_bit_for_every_half_precision_value(dtype):
    x = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
    for scale in (1.0, 2.0 / 448 + 1e-7, 0.37, 1e-6):
        got = _fused(x, scale)
        assert got.dtype == dtype and torch.equal(_bits(got), _bits(fp8.quantize_dequantize(x, scale))), scale


def test_not_contiguous_and_off_outside_the_block():
    x = torch.randn(64, 33, 7).transpose(0, 2) * 50
    y = _fused(x, 0.05)
    assert y.shape == x.shape and torch.equal(_bits(y), _bits(fp8.quantize_dequantize(x, 0.05)))
    assert not fused_qdq.applies(x)  # the block is closed again
    with fused_cpu_qdq():
        assert not fused_qdq.applies(torch.randn(8))  # small tensors stay eager


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(64, 128), torch.nn.Linear(128, 64), torch.nn.Linear(64, 16)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_sensitivity_is_the_same_with_and_without_it(monkeypatch):
    torch.manual_seed(0)
    model = _MLP().eval()
    x = torch.randn(192, 64)  # 64-row batches: every Q/DQ input holds >= MIN_NUMEL elements
    calib, evals = [(x[:64],)], [(x[64:128],), (x[128:],)]
    calls = []
    monkeypatch.setattr(fused_qdq, "_qdq_bits", _counting(fused_qdq._qdq_bits, calls))
    monkeypatch.setattr(fused_qdq, "_compiled", None)  # compile the counting wrapper
    monkeypatch.setattr(fused_qdq, "COMPILE_PAYS_AFTER_S", 0.0)  # any search is "long": fused
    fused = sensitivity(model, (x[:2],), calib, evals, progress=False)
    assert calls and fused_qdq._compiled, "the long search did not run the fused Q/DQ"
    monkeypatch.setattr(fused_qdq, "COMPILE_PAYS_AFTER_S", float("inf"))  # eager
    eager = sensitivity(model, (x[:2],), calib, evals, progress=False)
    assert fused.baseline == eager.baseline > 0
    assert [(r.group, r.metric) for r in fused.rows] == [(r.group, r.metric) for r in eager.rows]
    assert {r.kind for r in fused.rows} >= {"gemm"}


def _counting(fn, calls):
    def counted(x, scale):
        calls.append(1)  # runs while dynamo traces: once per compile
        return fn(x, scale)
    return counted


def test_a_short_search_stays_eager():
    from fxq.accuracy.groups import Evaluator, group_edges
    from fxq.accuracy.measure import GroupMeasure
    from fxq.conversion.fake_quant_view import fake_quant_view
    from fxq.pipeline import Request, StageClock, calibrated

    model, x = _MLP().eval(), torch.randn(64, 64)
    cal = calibrated(Request.check(model, (x[:2],), [(x,)], progress=False), StageClock())
    view = fake_quant_view(cal.program, cal.placement, cal.calibration.amax, cal.codes)
    groups = GroupMeasure(view, Evaluator(cal.program.module(), view.module, [(x,)], None),
                          group_edges(view.module, cal.placement))
    assert not groups.fused  # compiling (seconds) would cost more than it saves
    assert fused_qdq.worth_compiling(fused_qdq.COMPILE_PAYS_AFTER_S) and not fused_qdq.worth_compiling(1.0)


def test_no_compiler_warns_once_and_stays_eager(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fused_qdq, "_compiled", None)
    monkeypatch.setattr(fused_qdq.torch, "compile", no_compiler)
    x = torch.randn(5000) * 30
    with fused_cpu_qdq(), pytest.warns(UserWarning, match=r"fused CPU Q/DQ unavailable, using the eager op "
                                                          r"\(RuntimeError: no C\+\+ compiler\)"):
        y = torch.ops.fxq.fp8_qdq(x, 0.1)
    assert fused_qdq._compiled is False and torch.equal(_bits(y), _bits(fp8.quantize_dequantize(x, 0.1)))


def test_a_compiled_result_that_differs_is_dropped_for_the_eager_op(monkeypatch):
    monkeypatch.setattr(fused_qdq, "_compiled", lambda x, s: x * 0)  # stands in for a miscompiled kernel
    monkeypatch.setattr(fused_qdq, "_checked", set())
    x = torch.randn(5000) * 30
    with fused_cpu_qdq(), pytest.warns(UserWarning, match=r"\(RuntimeError: compiled Q/DQ differs from the eager op\)"):
        y = torch.ops.fxq.fp8_qdq(x, 0.1)
    assert fused_qdq._compiled is False and torch.equal(_bits(y), _bits(fp8.quantize_dequantize(x, 0.1)))
