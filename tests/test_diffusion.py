"""Diffusion pipelines on the CPU: a tiny DiTPipeline recorded, quantized in BF16, the FP8 transformer dropped in,
exported and checked (examples/diffusion.py --tiny, run in-process); drop-in attributes and call forms."""
import gc
import importlib.util
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from torch import nn

import fxq
from fxq.errors import InputError

pytest.importorskip("diffusers")
EXAMPLE = Path(__file__).parent.parent / "examples" / "diffusion.py"


def _example():
    spec = importlib.util.spec_from_file_location("fxq_example_diffusion", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    """The tiny DiT pipeline in BF16, six DDIM steps, classifier-free guidance (batch 2 -> 4 per call)."""
    out = tmp_path_factory.mktemp("dit")
    return _example().main(["--family", "dit", "--tiny", "--dtype", "bfloat16", "--onnx-dtype", "float16",
                            "--steps", "6", "--out", str(out)])


def test_pipeline_runs_with_the_quantized_transformer_dropped_in(dit):
    qm = dit.pipe.transformer
    assert isinstance(qm, fxq.QuantizedModel)
    assert dit.calls == 6 and dit.calibration_batches == 6  # one call per step, all kept for calibration
    assert dit.recording.example.args[0].shape == (4, 4, 8, 8)  # guidance doubles the batch of 2
    # Same seed, FP8 transformer against the BF16 one, six steps compounding: measured cosine 0.958, PSNR 16.9 dB.
    # (The BF16 float transformer itself is only 0.94-0.99 from its FP32 copy per step: a random tiny DiT is fragile.)
    assert dit.image["cosine"] > 0.93 and dit.image["psnr_db"] > 14
    assert dit.float_transformer() is None  # the quantized model does not keep the float one alive


def test_every_gemm_and_attention_block_ready_in_the_onnx(dit):
    assert dit.ready and dit.attention_ready == "2/2"
    assert dit.gemms_ready == 17  # 13 linear + 4 attention BMMs; timestep and class-embedding GEMVs skipped
    assert dit.pipe.transformer.placement.count("linear.weight") == 13
    graph = onnx.load(dit.onnx, load_external_data=False).graph
    assert [o.name for o in graph.output] == ["sample"]  # the Transformer2DModelOutput's key


def test_per_step_error_over_the_recorded_calls(dit):
    rows = dit.per_step.rows
    assert [r.call for r in rows] == list(range(6))
    assert all(0.9 < r.cosine < 1.0 for r in rows) and dit.worst_step_cosine == min(r.cosine for r in rows)
    png = Path(dit.onnx).parent / "dit_steps.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bf16_model_has_no_fp32_copy_of_its_weights(dit):
    """The program's state: FP8 codes for the quantized GEMM weights, BF16 for every other float tensor."""
    qm = dit.pipe.transformer
    state = {**qm.program.state_dict, **qm.program.constants}
    dtypes = {}
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            dtypes.setdefault(t.dtype, []).append(name)
    assert set(dtypes) == {torch.float8_e4m3fn, torch.bfloat16}, {k: v[:3] for k, v in dtypes.items()}
    assert len(dtypes[torch.float8_e4m3fn]) == qm.placement.count("linear.weight") == 13
    assert len(dtypes[torch.bfloat16]) > 13  # biases, norms, embeddings, the GEMVs left float


def test_drop_in_attributes_are_the_source_models(dit):
    qm = dit.pipe.transformer
    assert qm.config.sample_size == 8 and qm.config.out_channels == 8 and qm.config.num_layers == 2
    assert qm.dtype == torch.bfloat16 and qm.device == torch.device("cpu")
    assert isinstance(qm.quant_config, fxq.QuantConfig) and qm.quant_config.fallback == ()


def test_call_forms_the_float_model_accepts(dit):
    qm, ex = dit.pipe.transformer, dit.recording.example
    x, t, c = ex.args[0], ex.kwargs["timestep"], ex.kwargs["class_labels"]
    with torch.no_grad():
        want = qm(x, timestep=t, class_labels=c).sample  # the captured form
        for got in (qm(x, t, c), qm(hidden_states=x, timestep=t, class_labels=c),
                    qm(x, class_labels=c, timestep=t, return_dict=True, cross_attention_kwargs=None)):
            assert torch.equal(got.sample, want)
    with pytest.raises(InputError, match=r"argument 'return_dict'=False was not passed when this model was captured"):
        qm(x, timestep=t, class_labels=c, return_dict=False)
    with pytest.raises(InputError, match=r"argument 'cross_attention_kwargs'=\{'scale': 0.5\}"):
        qm(x, timestep=t, class_labels=c, cross_attention_kwargs={"scale": 0.5})
    with pytest.raises(InputError, match=r"argument 'class_labels' was a tensor when this model was captured"):
        qm(x, timestep=t)
    with pytest.raises(TypeError, match="unexpected keyword argument 'sample'"):
        qm(x, timestep=t, class_labels=c, sample=x)  # what the float model's forward refuses too


class Denoiser(nn.Module):
    """No config; called the way SD3 and Flux pipelines call their transformer: keywords, return_dict=False."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, hidden_states, timestep, scale=1.0, attention_kwargs=None, return_dict=True):
        out = self.fc2(torch.relu(self.fc1(hidden_states + timestep[:, None, None]))) * scale
        return {"sample": out} if return_dict else (out,)


def test_captured_non_tensor_values_must_match():
    model = Denoiser().eval()
    x, t = torch.randn(2, 16, 32), torch.tensor([0.5, 0.5])
    # Flux's pipeline passes joint_attention_kwargs={}: a dict among dynamic-batch inputs is captured as a constant.
    example = {"hidden_states": x, "timestep": t, "attention_kwargs": {}, "return_dict": False}
    qm = fxq.quantize(model, example, [example], progress=False)
    with torch.no_grad():
        (y,) = qm(x, t, attention_kwargs={}, return_dict=False)
        assert torch.equal(y, qm(hidden_states=x, timestep=t, return_dict=False, scale=1.0, attention_kwargs={})[0])
        assert qm(torch.cat([x, x, x]), t.repeat(3), attention_kwargs={}, return_dict=False)[0].shape == (6, 16, 32)
        ref = model(x, t, return_dict=False)[0]
    assert torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0) > 0.99
    with pytest.raises(InputError, match=r"argument 'return_dict' is True in this call but was False when this model "
                                         r"was captured.*fix: quantize with example inputs that pass return_dict=True"):
        qm(x, t, attention_kwargs={})
    with pytest.raises(InputError, match=r"argument 'attention_kwargs' is None in this call but was \{\}"):
        qm(x, t, return_dict=False)
    with pytest.raises(InputError, match=r"argument 'scale'=2.0 was not passed"):
        qm(x, t, scale=2.0, attention_kwargs={}, return_dict=False)
    assert qm.dtype == torch.float32 and qm.device == torch.device("cpu")
    with pytest.raises(AttributeError, match=r"source model has no `config`; fxq's QuantConfig is `qm.quant_config`"):
        qm.config


def test_config_dtype_device_are_taken_once_from_the_source():
    model = Denoiser().eval().to(torch.bfloat16)
    model.config = SimpleNamespace(sample_size=16, in_channels=32)
    x, t = torch.randn(2, 16, 32, dtype=torch.bfloat16), torch.tensor([0.5, 0.5], dtype=torch.bfloat16)
    qm = fxq.quantize(model, (x, t), [(x, t)], progress=False)
    model.config.sample_size = 64  # the source changes afterwards: the quantized model's copy does not
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # nor does it keep the source alive
    assert qm.config.sample_size == 16 and qm.config.in_channels == 32 and qm.dtype == torch.bfloat16
    with torch.no_grad():
        assert qm(x, t)["sample"].dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_joint_attention_pipelines_record_quantize_drop_in_export_check(family, tmp_path):
    """SD3's and Flux's tiny pipelines end to end; their joint attention output is split into two O-projections,
    whose input scales fxq ties so that every attention block is ready (measured image cosine 0.9999 for both)."""
    r = _example().main(["--family", family, "--tiny", "--steps", "4", "--out", str(tmp_path)])
    assert r.calls == 4 and r.calibration_batches == 4
    assert r.ready and r.attention_ready == "2/2"
    (tied,) = r.pipe.transformer.placement.tied  # the double-stream block; the single block concatenates instead
    assert sorted(k.split(":")[0] for k in tied) == ["transformer_blocks.0.attn.to_add_out",
                                                     "transformer_blocks.0.attn.to_out.0"]
    assert r.image["cosine"] > 0.999 and r.worst_step_cosine > 0.99
