"""The exported graph is in the dtype that was asked, or fxq says why not; BF16 works end to end."""
import logging
import re

import onnx
import pytest
import torch
from onnx import TensorProto

import fxq
from fxq.errors import InputError
from fxq.verify import UPCAST_NOTE, compare, first_output, run_onnx
from hf_models import bert_inputs, small_bert, vit, vit_inputs

FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def _float_types(path) -> set[int]:
    """Element types of the file's float inputs, outputs and initializers."""
    g = onnx.load(str(path)).graph
    types = {v.type.tensor_type.elem_type for v in [*g.input, *g.output]} | {t.data_type for t in g.initializer}
    return types & FLOATS


class Scaled(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.fc = torch.nn.Linear(32, 32)
        self.factor = factor

    def forward(self, x):
        return self.fc(x) * self.factor


class Masked(torch.nn.Module):
    """A finfo(float32).min additive mask, as HF models build it."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(32, 32)

    def forward(self, x, keep):
        y = self.fc(x)
        mask = torch.zeros_like(y).masked_fill(~keep, torch.finfo(torch.float32).min)
        return torch.softmax(y + mask, -1)


def _quantize(model, *example):
    return fxq.quantize(model, example, [example], progress=False)


@pytest.mark.parametrize("model_dtype,asked,elem", [(torch.bfloat16, torch.float16, TensorProto.FLOAT16),
                                                    (torch.float16, torch.bfloat16, TensorProto.BFLOAT16)])
def test_graph_dtype_is_the_asked_one_not_the_models(tmp_path, model_dtype, asked, elem):
    model = small_bert().to(model_dtype)
    qm = fxq.quantize(model, bert_inputs(), [bert_inputs(4)], progress=False)
    result = qm.export_onnx(tmp_path / "m.onnx", dtype=asked)
    assert result.dtype == asked and _float_types(result.path) == {elem}


@pytest.mark.parametrize("factor,shown", [(1e6, "1e+06"), (100_000, "100000")])
def test_literal_beyond_fp16_is_refused_not_clamped(tmp_path, factor, shown):
    qm = _quantize(Scaled(factor), torch.randn(4, 32))
    with pytest.raises(InputError, match=rf"constant {re.escape(shown)} in mul .*does not fit torch.float16.*float32 or torch.bfloat16"):
        qm.export_onnx(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    x = torch.randn(3, 32)  # where it fits, the factor is kept exactly
    result = qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float32)
    assert compare(qm(x), run_onnx(result.path, (x,), torch.float32)[0])["cosine"] > 0.9999


def test_mask_sentinel_is_clamped_and_runs_finite(tmp_path):
    x, keep = torch.randn(4, 32), torch.rand(4, 32) > 0.3
    qm = _quantize(Masked(), x, keep)
    result = qm.export_onnx(tmp_path / "m.onnx")
    out = run_onnx(result.path, (x, keep), torch.float16)[0]
    assert torch.isfinite(torch.from_numpy(out)).all()
    assert compare(qm(x, keep), out)["cosine"] > 0.99


def test_scale_beyond_the_graph_dtype_is_refused_with_the_tensor_named(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32))
    x = torch.randn(4, 32)
    qm = _quantize(model, x)
    huge = {"version": 1, "batches": 1, "amax": {**qm.amax, next(iter(qm.amax)): 1e308}}
    qm2 = fxq.quantize(model, (x,), calibration=huge, progress=False)
    with pytest.raises(InputError, match=rf"scale of '{next(iter(qm.amax))}' is 2.23e\+305, beyond torch.float16's largest.*amax is 1e\+308.*float32/bfloat16"):
        qm2.export_onnx(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="beyond torch.float32's largest"):  # even FP32 cannot hold it
        qm2.export_onnx(tmp_path / "m.onnx", dtype=torch.float32)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sequential_with_input_argument_exports(tmp_path, dtype):
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    x = torch.randn(4, 32)
    qm = _quantize(model, x)
    result = qm.export_onnx(tmp_path / "m.onnx", dtype=dtype)
    elem = TensorProto.FLOAT16 if dtype == torch.float16 else TensorProto.BFLOAT16
    assert _float_types(result.path) == {elem}
    assert compare(qm(x), run_onnx(result.path, (x,), dtype)[0])["cosine"] > 0.99


def test_bf16_needs_opset_22_and_picks_23(tmp_path):
    qm = fxq.quantize(small_bert(), bert_inputs(), [bert_inputs(4)], progress=False)
    with pytest.raises(InputError, match=r"bfloat16 export needs opset >= 22.*got opset 21.*opset=23"):
        qm.export_onnx(tmp_path / "m.onnx", dtype=torch.bfloat16, opset=21)
    assert qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float16).opset == 21


def _tiny_vit():
    return vit(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               image_size=32, patch_size=8)


@pytest.mark.parametrize("name", ["vit", "bert"])
def test_bf16_end_to_end_verified_on_an_fp32_upcast(tmp_path, caplog, name):
    torch.manual_seed(0)
    model, make = (_tiny_vit(), lambda n: vit_inputs(n, 32)) if name == "vit" else (small_bert(), bert_inputs)
    qm = fxq.quantize(model, make(2), [make(4) for _ in range(2)], progress=False)
    result = qm.export_onnx(tmp_path / "m.onnx", dtype=torch.bfloat16)
    assert result.opset == 23 and _float_types(result.path) == {TensorProto.BFLOAT16}
    x = make(3)
    with caplog.at_level(logging.INFO, logger="fxq"):
        out = run_onnx(result.path, x, torch.bfloat16)[0]
    assert UPCAST_NOTE in caplog.text
    assert compare(first_output(qm(**x)), out)["cosine"] > 0.99  # the FP16 path's tolerance


def test_outputs_and_dynamic_axes_have_the_models_names(tmp_path):
    qm = fxq.quantize(small_bert(), bert_inputs(), [bert_inputs(4)], dynamic_seq=True, progress=False)
    result = qm.export_onnx(tmp_path / "m.onnx")
    g = onnx.load(str(result.path)).graph
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [o.name for o in g.output] == ["last_hidden_state", "pooler_output"]
    assert {i.name: dims(i) for i in g.input} == {"input_ids": ["batch", "sequence"],
                                                  "attention_mask": ["batch", "sequence"]}
    assert dims(g.output[0]) == ["batch", "sequence", 64] and dims(g.output[1]) == ["batch", 64]
    assert result.post_counts["rename_outputs"] == 2
    named = [d for v in [*g.input, *g.output, *g.value_info] for d in v.type.tensor_type.shape.dim
             if re.search(r"\b(batch|sequence)\b", d.dim_param)]
    assert result.post_counts["rename_dims"] == len(named) >= 7  # 4 input dims, 3 output dims at least
    x = bert_inputs(3, 9)  # another batch and length run through the same file
    assert compare(first_output(qm(**x)), run_onnx(result.path, x)[0])["cosine"] > 0.99


def test_tuple_outputs_are_numbered(tmp_path):
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(32, 32)

        def forward(self, x):
            y = self.fc(x)
            return y, torch.tanh(y)

    qm = _quantize(Two(), torch.randn(4, 32))
    g = onnx.load(str(qm.export_onnx(tmp_path / "m.onnx").path)).graph
    assert [o.name for o in g.output] == ["output_0", "output_1"]


def test_dynamic_seq_from_a_one_token_example(tmp_path):
    one = bert_inputs(2, 1)
    qm = fxq.quantize(small_bert(), one, [bert_inputs(4)], dynamic_seq=True, progress=False)
    result = qm.export_onnx(tmp_path / "m.onnx")
    g = onnx.load(str(result.path)).graph
    assert [d.dim_param for d in g.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    x = bert_inputs(2, 12)
    assert compare(first_output(qm(**x)), run_onnx(result.path, x)[0])["cosine"] > 0.99


def test_scale_below_the_smallest_normal_warns_with_the_tensor_named(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    with torch.no_grad():
        model[0].weight.mul_(1e-4)  # amax ~2e-5: amax / 448 ~4e-8, below FP16's smallest normal 6.1e-5
    qm = _quantize(model, torch.randn(4, 32) * 1e-4)  # the input too: amax ~5e-4, scale ~1e-6
    # The weight's codes were made at its scale rounded up to FP16's smallest normal (fp8.portable_scale), so the
    # graph stores that scale exactly: nothing to warn about. The activation's scale is clamped where it is stored.
    assert qm.program.graph.find_nodes(op="call_function", target=torch.ops.fxq.fp8_dequant.default)[0].args[1] \
        == torch.finfo(torch.float16).tiny
    with pytest.warns(UserWarning, match=r"fxq: 1 FP8 scales are below torch.float16's smallest normal.*\['0:linear.input'\]"):
        qm.export_onnx(tmp_path / "m.onnx")


def test_bf16_file_with_external_data_verifies(tmp_path, monkeypatch):
    monkeypatch.setattr("fxq.export.to_onnx.EXTERNAL_DATA_BYTES", 10_000)  # pretend the small model is over 2 GiB
    qm = fxq.quantize(small_bert(), bert_inputs(), [bert_inputs(4)], progress=False)
    result = qm.export_onnx(tmp_path / "m.onnx", dtype=torch.bfloat16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    x = bert_inputs(2)
    assert compare(first_output(qm(**x)), run_onnx(result.path, x, torch.bfloat16)[0])["cosine"] > 0.99


def test_a_graph_left_partly_in_float32_is_refused_not_written(tmp_path):
    class ScalarWhere(torch.nn.Module):  # where(cond, 0.0, min) builds a default-dtype (FP32) tensor
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(32, 32)

        def forward(self, x, keep):
            return torch.softmax(self.fc(x) + torch.where(keep, 0.0, torch.finfo(torch.float32).min), -1)

    qm = _quantize(ScalarWhere(), torch.randn(4, 32), torch.rand(4, 32) > 0.3)
    with pytest.raises(InputError, match=r"should be torch.float16 but holds \d+ tensors of another float dtype.*FLOAT'"):
        qm.export_onnx(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []



class Unpatchify(torch.nn.Module):
    """SD3's last step, einsum("nhwpqc->nchpwq"), reorders dims; `contract` adds an einsum that sums (stays one)."""

    def __init__(self, contract: bool):
        super().__init__()
        self.fc = torch.nn.Linear(32, 32)
        self.contract = contract

    def forward(self, x):  # x: (n, 4, 4, 32) -> 2x2 patches of 8 channels -> (n, 8, 8, 8)
        y = self.fc(x).reshape(x.shape[0], 4, 4, 2, 2, 8)
        img = torch.einsum("nhwpqc->nchpwq", y).reshape(x.shape[0], 8, 8, 8)
        return torch.einsum("nchw,nchw->nc", img, img) if self.contract else img


@pytest.mark.parametrize("contract", [False, True])
def test_permuting_einsum_becomes_a_transpose(contract, tmp_path):
    """ONNX's Einsum has no BF16 type: a BF16 export holding SD3's unpatchify einsum was invalid."""
    model = Unpatchify(contract).eval().to(torch.bfloat16)
    x = torch.randn(2, 4, 4, 32, dtype=torch.bfloat16)
    qm = fxq.quantize(model, x, [x], progress=False)
    targets = [n.target for n in qm.program.graph.nodes]
    assert targets.count(torch.ops.aten.einsum.default) == int(contract)
    assert torch.ops.aten.permute.default in targets and qm.placement.einsums_to_permute == 1
    with torch.no_grad():
        ref, got = model(x).float().flatten(), qm(x).float().flatten()
    assert torch.nn.functional.cosine_similarity(ref, got, dim=0) > 0.99
    dtype = torch.float16 if contract else torch.bfloat16  # a contracting einsum has no BF16 ONNX form
    r = qm.export_onnx(tmp_path / "m.onnx", dtype=dtype)
    ops = [n.op_type for n in onnx.load(str(r.path)).graph.node]
    assert (ops.count("Einsum"), "Transpose" in ops) == (int(contract), True)
