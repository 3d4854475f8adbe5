"""One capture per pipeline, a program that owns its state, and the input shapes users have."""
import warnings

import numpy as np
import onnx
import pytest
import torch
import transformers

import fxq
from fxq.verify import compare, first_output, onnx_session, run_onnx
from hf_models import bert_inputs, small_bert, vit, vit_inputs
from onnx_post.checker import check_model
from tiny_models import TinyAttention, inputs_for


def _count_exports(monkeypatch) -> list:
    calls = []
    real = torch.export.export

    def counting(*a, **k):
        calls.append(type(a[0]).__name__)
        return real(*a, **k)

    monkeypatch.setattr(torch.export, "export", counting)
    return calls


def test_one_torch_export_per_pipeline(monkeypatch, tmp_path):
    calls = _count_exports(monkeypatch)
    model = small_bert()
    qm = fxq.quantize(model, bert_inputs(), [bert_inputs(4)], progress=False)
    qm.export_onnx(tmp_path / "a.onnx", dtype=torch.float16)
    qm.export_onnx(tmp_path / "b.onnx", dtype=torch.float32)
    _ = qm.program
    assert calls == ["BertModel"]  # the source model once; never the quantized graph, never again in fp16


def test_export_after_the_source_changes_equals_the_quantized_model(tmp_path):
    model = TinyAttention("mul_after").eval()
    x = inputs_for("mul_after")
    qm = fxq.quantize(model, x, [inputs_for("mul_after", 4)], progress=False)
    before = qm(*x)
    with torch.no_grad():  # a user edits the source model after quantizing
        for p in model.parameters():
            p.mul_(3.0)
    after = qm(*x)
    assert torch.equal(before, after)
    r = qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float32)
    out = run_onnx(r.path, x, torch.float32)[0]
    assert compare(before, out)["cosine"] > 0.99999
    assert compare(model(*x), out)["cosine"] < 0.999  # the edited source computes something else


def test_fp8_weights_are_written_straight_from_the_program(tmp_path):
    qm = fxq.quantize(small_bert(), bert_inputs(), [bert_inputs(4)], progress=False)
    r = qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float16)
    assert r.post_counts["fold_weight_quantize"] == 0  # nothing left to fold: the exporter wrote FP8 already
    fp8 = [i for i in onnx.load(str(r.path)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT8E4M3FN
           and len(i.dims) == 2]
    assert len(fp8) == qm.placement.count("linear.weight") == 12  # 2 layers x (q, k, v, o, fc1, fc2); pooler: gemv


class IdTables(torch.nn.Module):
    """A diffusion-transformer-like forward: batched latents plus position-id tables without a batch dim."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(32, 32)
        self.pos = torch.nn.Linear(3, 32)

    def forward(self, hidden, img_ids):  # hidden (B, T, 32), img_ids (T, 3)
        return self.proj(hidden) + self.pos(img_ids.float())


def test_inputs_without_a_batch_dim_stay_static(tmp_path):
    model = IdTables().eval()
    ids = torch.arange(24).view(8, 3)
    qm = fxq.quantize(model, (torch.randn(1, 8, 32), ids), [(torch.randn(4, 8, 32), ids)], progress=False)
    shapes = [n.meta["val"].shape for n in qm.program.graph.nodes if n.op == "placeholder" and "fxq_state" not in n.meta]
    assert not isinstance(shapes[0][0], int) and tuple(shapes[1]) == (8, 3)  # batch dynamic, the table static
    out = qm(torch.randn(5, 8, 32), ids)
    assert out.shape == (5, 8, 32)
    r = qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float32)
    dims = [[d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in onnx.load(str(r.path)).graph.input]
    assert isinstance(dims[0][0], str) and dims[1] == [8, 3]


def test_user_dynamic_shapes_in_python_and_in_a_config(tmp_path):
    model = small_bert()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    qm = fxq.quantize(model, bert_inputs(), [bert_inputs(4)], dynamic_shapes=shapes, progress=False)
    seq_json = {"name": "seq", "max": 64}
    cfg = fxq.QuantConfig(dynamic_shapes={"input_ids": {"0": "batch", "1": seq_json},
                                          "attention_mask": {"0": "batch", "1": seq_json}})
    qm2 = fxq.quantize(model, bert_inputs(), [bert_inputs(4)], fxq.QuantConfig.from_dict(cfg.to_dict()), progress=False)
    for q in (qm, qm2):
        x = bert_inputs(3, seq=24)  # a length never seen
        assert first_output(q(**x)).shape == (3, 24, 64)
    with pytest.raises(fxq.CaptureError, match=r"torch suggests: seq = Dim\('seq', max=64\)"):
        fxq.quantize(model, bert_inputs(), [bert_inputs(4)], progress=False,
                     dynamic_shapes={"input_ids": {0: batch, 1: torch.export.Dim("seq")},
                                     "attention_mask": {0: batch, 1: torch.export.Dim("seq")}})


def test_dynamic_sequence_length_runs_two_lengths_in_onnxruntime(tmp_path):
    model = small_bert()
    qm = fxq.quantize(model, bert_inputs(), [bert_inputs(4)], dynamic_seq=True, progress=False)
    r = qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float16)
    for seq in (12, 40):
        x = bert_inputs(2, seq=seq)
        out = run_onnx(r.path, x, torch.float16)[0]
        assert out.shape == (2, seq, 64)
        assert compare(first_output(qm(**x)), out)["cosine"] > 0.99999  # measured 0.9999996 at both lengths
    rep = check_model(r.path)
    assert all("dynamic_seq_len" in a.reasons for a in rep.attention)  # the checker says what it costs TensorRT


def test_decoder_with_kv_cache_on_is_captured_with_caching_off(tmp_path):
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=500, n_positions=64)
    model = transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval()
    assert model.config.use_cache
    x = {"input_ids": torch.randint(0, 500, (2, 16))}
    with pytest.warns(UserWarning, match="use_cache=False"):
        qm = fxq.quantize(model, x, [x], progress=False)
    assert model.config.use_cache  # restored on the source model
    assert first_output(qm(**x)).shape == (2, 16, 500)
    assert qm.report().to_dict()["summary"].startswith(f"{len(qm.placement.sites)} FP8 quantizers")
    with pytest.raises(fxq.CaptureError, match="use_cache"):
        fxq.quantize(model, {**x, "use_cache": True}, [x], progress=False)


def test_gemv_heads_are_skipped_by_default_and_can_be_kept():
    model = vit(num_hidden_layers=1)
    calib = [vit_inputs(2)]
    qm = fxq.quantize(model, vit_inputs(1), calib, progress=False)
    gemv = [k for k in qm.placement.skips if k.reason == "gemv"]
    assert [(k.module, k.what) for k in gemv] == [("classifier", "gemm")]
    kept = fxq.quantize(model, vit_inputs(1), calib, fxq.QuantConfig(skip_gemv=False), progress=False)
    assert not [k for k in kept.placement.skips if k.reason == "gemv"]
    assert kept.placement.count("linear.weight") == qm.placement.count("linear.weight") + 1


@pytest.mark.parametrize("kwargs, words", [
    ({"skip_gemv": "yes"}, "skip_gemv must be True or False"),
    ({"dynamic_shapes": ["input_ids"]}, "dynamic_shapes must map input names"),
    ({"dynamic_shapes": {"input_ids": {"zero": "batch"}}}, r"dynamic_shapes\['input_ids'\] must map dim indices"),
    ({"dynamic_shapes": {"input_ids": {"1": {"name": "seq", "max": "64"}}}}, "must map dim indices"),
])
def test_bad_shape_options_in_a_config_are_refused(kwargs, words):
    with pytest.raises(TypeError, match=words):
        fxq.QuantConfig(**kwargs)


def test_program_in_dtype_refuses_non_float_targets():
    from fxq.conversion.graph_dtype import program_in_dtype

    qm = fxq.quantize(TinyAttention("mul_after").eval(), inputs_for("mul_after"), [inputs_for("mul_after")],
                      progress=False)
    assert program_in_dtype(qm.program, torch.float32) is qm.program  # nothing to convert
    for bad in (torch.int8, torch.float8_e4m3fn):
        with pytest.raises(ValueError, match="cannot convert a program to"):
            program_in_dtype(qm.program, bad)


def test_one_torch_export_with_fallback_and_the_same_result_as_placing_its_choice(monkeypatch):
    from sensitive_models import data, two_blocks

    m, example, calib, evals = two_blocks(sensitive=("a",)), data(1, 2)[0], data(2), data(2, seed=2)
    calls = _count_exports(monkeypatch)
    qm = fxq.quantize(m, example, calib, fallback=fxq.Fallback(evals, max_error=4e-4), progress=False)
    assert calls == ["TwoBlocks"]  # the search and the second placement reuse the one captured program
    assert qm.fallback_plan.groups == ("a:attention",) and qm.quant_config.fallback == ("a:attention",)
    assert list(qm.seconds) == ["capture", "place", "calibrate", "fallback", "convert"]
    direct = fxq.quantize(m, example, calib, fxq.QuantConfig(fallback=("a:attention",)), progress=False)
    assert qm.placement.keys() == direct.placement.keys() and qm.placement.skips == direct.placement.skips
    assert {k: qm.amax[k] for k in direct.amax} == direct.amax  # qm keeps the skipped block's amax too, as before
    x = data(1, seed=7)[0]
    assert torch.equal(qm(x), direct(x))
    for name, t in direct.program.state_dict.items():
        assert torch.equal(qm.program.state_dict[name].view(torch.uint8), t.view(torch.uint8)), name
