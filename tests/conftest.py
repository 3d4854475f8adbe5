"""Fixtures every test file may use: small saved Hugging Face folders for the CLI, and full ViT-base
quantized once per session (eager and SDPA attention)."""
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
# Under pytest-xdist the cores are shared between workers: one worker per core, one thread each.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _workers)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def vit_folder(tmp_path_factory):
    """A tiny ViT (2 layers, 32x32 images) in vit_folder/model, six 40x48 photos in vit_folder/images."""
    from hf_models import save_vit_folder

    return save_vit_folder(tmp_path_factory.mktemp("vit"), n_images=6)


@pytest.fixture(scope="session")
def bert_folder(tmp_path_factory):
    """A tiny BERT with MiniLM's tokenizer (max_position_embeddings 64) in bert_folder/model, and three
    calibration sentences (and an empty line) in bert_folder/sentences.txt."""
    from hf_models import save_bert_folder

    return save_bert_folder(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def vit_base_fp8():
    """{attn: (float ViT-base, its fxq.QuantizedModel)} for "eager" and "sdpa", same weights and calibration."""
    import fxq
    from hf_models import vit, vit_inputs

    torch.manual_seed(0)
    calib = [vit_inputs(2) for _ in range(2)]
    out = {}
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = vit(attn)
        out[attn] = (model, fxq.quantize(model, vit_inputs(1), calib, progress=False))
    return out


@pytest.fixture(scope="session")
def vit_model(vit_folder):
    return vit_folder / "model"


@pytest.fixture(scope="session")
def bert_model(bert_folder):
    return bert_folder / "model"


@pytest.fixture(scope="session")
def calibrated():
    """TinyAttention quantized on one batch (tests/cli_runs.py): a source of real amax keys and an exporter."""
    from cli_runs import quantize_tiny

    torch.manual_seed(0)
    return quantize_tiny()


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the CLI gets as far as loading a model."""
    import fxq.cli.sources

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(fxq.cli.sources, "load_source", refuse)
