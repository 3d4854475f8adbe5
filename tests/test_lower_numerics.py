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
