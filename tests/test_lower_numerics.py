"""fxq.lower keeps a BF16 model's deliberate fp32/fp64 islands (issue 17's Flux drift), in lower and in ONNX.

The tiny DiT (tests/upcast_models.py) computes its timestep embedding of `t * 1000` in fp32 and its RoPE
table in fp64, as diffusers' Flux does. Turning those literals into BF16 (what lower did) gave cosine
0.9859 against the fake-quant model here, 0.864 on the full Flux; fp16 lowering crashed on the bf16 casts.
"""
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto

import fxq
from fxq.conversion.graph_dtype import captured_dtype, literal_dtype
from fxq.verify import run_onnx
from upcast_models import TinyDiT, dit_inputs

aten = torch.ops.aten


def cosine(a, b) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


@pytest.fixture(scope="module")
def qm():
    torch.manual_seed(0)
    model = TinyDiT().to(torch.bfloat16).eval()
    return fxq.quantize(model, dit_inputs(), [dit_inputs(seed=i) for i in (1, 2)], progress=False)


def _dtype_literals(gm) -> list[torch.dtype]:
    return [a for n in gm.graph.nodes if n.op == "call_function"
            for a in (*n.args, *n.kwargs.values()) if isinstance(a, torch.dtype)]


def test_the_rule():
    assert captured_dtype([torch.zeros(10, dtype=torch.bfloat16), torch.zeros(3),
                           torch.zeros(99).to(torch.float8_e4m3fn)]) == torch.bfloat16
    assert captured_dtype([]) == torch.float32
    rule = [literal_dtype(dt, torch.float16, torch.bfloat16, torch.float64)
            for dt in (torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int64)]
    assert rule == [torch.float16, torch.float16, torch.float32, torch.float64, torch.int64]
    # An fp32 capture: fp32 is the model's own dtype; ONNX caps an fp64 upcast at fp32 (TensorRT has no fp64).
    assert literal_dtype(torch.float32, torch.bfloat16, torch.float32, torch.float64) == torch.bfloat16
    assert literal_dtype(torch.float64, torch.bfloat16, torch.float32, torch.float32) == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lowered_bf16_model_keeps_its_upcasts_and_follows_fake_quant(qm, dtype):
    x = dit_inputs(4, seed=9)
    ref = qm(*x)
    low = fxq.lower(qm, dtype)
    literals = _dtype_literals(low.graph_module)
    # timestep: arange(fp32) and t.float(); RoPE: two arange(fp64), two .float(); q and k rotated in fp32.
    assert literals.count(torch.float32) >= 4 and literals.count(torch.float64) == 2
    assert torch.bfloat16 not in literals or dtype == torch.bfloat16
    out = low(*x)
    assert out.dtype == dtype
    # measured: bf16 0.99944, fp16 0.99927 (bf16 0.9859 with the upcasts cast down; fp16 crashed)
    assert cosine(out, ref) > 0.998


def test_onnx_export_keeps_the_upcasts_as_fp32_casts(qm, tmp_path):
    result = qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float16)
    g = onnx.load(str(result.path)).graph
    io = {v.type.tensor_type.elem_type for v in [*g.input, *g.output]}
    assert io == {TensorProto.FLOAT16}  # inputs and outputs in the asked dtype
    casts = [a.i for n in g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    assert TensorProto.FLOAT in casts  # the fp32 islands (fp64 capped at fp32: TensorRT has no fp64)
    assert TensorProto.DOUBLE not in casts
    x = dit_inputs(4, seed=9)
    out = run_onnx(result.path, x, torch.float16)[0]
    assert cosine(torch.from_numpy(out).float(), qm(*x).float()) > 0.998


# ---- weight scales below fp16's smallest normal (the SD-1.x UNet drift, results/gpu_conv.md) ----

class WideResidual(torch.nn.Module):
    """The smallest model that showed it: a 3x3 conv over 256 channels (amax ~1/48 at PyTorch's default init,
    scale 4.6e-5 < fp16's smallest normal 6.1e-5) and a Linear with K = 2048, each inside a residual add, where a
    weight that grew by 1.3x in the fp16 graph shows as a cosine drop (a bare gain would not)."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.GroupNorm(8, 256)
        self.conv = torch.nn.Conv2d(256, 256, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Linear(256, 2048), torch.nn.Linear(2048, 256)

    def forward(self, x):
        h = x + self.conv(F.silu(self.norm(x)))
        t = h.flatten(2).transpose(1, 2)
        return t + self.fc2(F.gelu(self.fc1(t)))


@pytest.fixture(scope="module")
def wide_qm():
    torch.manual_seed(0)
    return fxq.quantize(WideResidual().eval(), torch.randn(2, 256, 4, 4),
                        [torch.randn(2, 256, 4, 4) for _ in range(2)], progress=False)


def test_portable_scale():
    from onnx_post import fp8

    for s in (4.16e-5, 1e-9, 9.3002e-5, 1 / 448, 0.0123456, 3.0):
        p = fp8.portable_scale(s)
        assert s <= p < max(s, fp8.smallest_scale(torch.float16)) * (1 + 2 ** -7)  # rounded up, by < 1 bf16 step
        assert all(fp8.stored_scale(p, dt) == p for dt in (torch.float32, torch.float16, torch.bfloat16))
    t = torch.tensor([4.16e-5, 9.3002e-5, 0.0123456])
    assert fp8.portable_scale(t).tolist() == [fp8.portable_scale(float(v)) for v in t]


def test_weight_codes_mean_the_same_weight_in_every_graph_dtype(wide_qm):
    from fxq.conversion.insert import DEQUANT
    from onnx_post import fp8

    scales = [float(n.args[1]) for n in wide_qm.program.graph.find_nodes(op="call_function", target=DEQUANT)]
    assert len(scales) == 3 and min(scales) < 6.2e-5  # the conv's and fc2's amax / 448 were below fp16's normals
    assert all(fp8.stored_scale(s, dt) == s for s in scales for dt in (torch.float16, torch.bfloat16))


def test_lowered_fp16_follows_fake_quant_where_weight_scales_are_tiny(wide_qm, tmp_path):
    x = torch.randn(2, 256, 4, 4)
    ref = wide_qm(x)
    low = fxq.lower(wide_qm, torch.float16)
    assert (low.stats.gemms_fp8, low.stats.convs_float) == (2, 1)  # fc1, fc2 on _scaled_mm; the 3x3 conv kept
    out = low(x)
    # measured: 0.999988, norm ratio 1.00006 (before: 0.99549 and 1.037 in lower, the same in the fp16 program)
    assert cosine(out, ref) > 0.9999
    assert abs(out.float().norm() / ref.norm() - 1) < 0.002
    onnx_out = run_onnx(wide_qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float16).path, x, torch.float16)[0]
    assert cosine(torch.from_numpy(onnx_out).float(), ref) > 0.9999  # the engine's graph: the same weights
