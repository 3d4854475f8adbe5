"""FP8 weight rounding on pretrained weights: round-to-nearest vs GPTQ, per-tensor vs per-channel.

Per GEMM: output SQNR 10 log10(||X W^T||^2 / ||X (W - W_q)^T||^2) for each way of choosing W_q, on
the calibration tokens (what GPTQ optimises) and on held-out tokens (what it generalises to). Both
come from input Hessians H = X^T X, so no GEMM has to be re-run. Then the whole model: feature
cosine vs FP32 on the held-out samples for each config (every other role FP8 as usual).

    nice -n 10 .venv/bin/python -m benchmarks.weight_rounding              # ~3-5 min on 2 cores
    nice -n 10 .venv/bin/python -m benchmarks.weight_rounding --models dinov2 --n-calib 32
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import fxq  # noqa: E402
from fxq.accuracy import weight_rounding as wr  # noqa: E402
from onnx_post import fp8  # noqa: E402
from fxq.cli import zoo
from fxq.capture.program import Inputs, capture_program  # noqa: E402
from fxq.calibration.run import run_calibration  # noqa: E402
from fxq.graph_utils import state_name  # noqa: E402
from fxq.calibration.hessian import insert_hessian_observers, weight_hessians, weight_readers  # noqa: E402
from fxq.conversion.insert import remove_observers, state_tensors  # noqa: E402
from fxq.conversion.weight_codes import GPTQ_OPTIONS, channel_scale  # noqa: E402
from fxq.placement.place import place  # noqa: E402
from fxq.verify import first_output  # noqa: E402

from benchmarks import datasets as D  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 112
SEQ_LEN = 64
BATCH = 32

# name -> (rounding, axis, act_order, bias correction): the per-GEMM variants compared.
VARIANTS = {
    "rtn": ("nearest", None, False, False),
    "gptq": ("gptq", None, False, False),
    "gptq_act": ("gptq", None, True, False),
    "gptq_bc": ("gptq", None, False, True),
    "rtn_ch": ("nearest", 0, False, False),
    "gptq_ch": ("gptq", 0, False, False),
}
CONFIGS = {  # whole-model configs (fxq.quantize)
    "rtn": fxq.QuantConfig(),
    "gptq": fxq.QuantConfig(weight_rounding="gptq"),
    "rtn_ch": fxq.QuantConfig(weight_axis=0),
    "gptq_ch": fxq.QuantConfig(weight_rounding="gptq", weight_axis=0),
}


def _chunks(x, n=BATCH):
    return [x[i:i + n] for i in range(0, len(x), n)]


def dinov2_task(n_calib: int, n_eval: int):
    model = zoo.load_dinov2_small()
    tr, _ = D.fashion_mnist("train", n_calib)
    te, _ = D.fashion_mnist("test", n_eval)
    pix = lambda imgs: {"pixel_values": D.fashion_mnist_pixels(imgs, IMAGE_SIZE)}  # noqa: E731
    feats = lambda h, _b: torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1)  # noqa: E731  CLS ++ mean patch
    return ("DINOv2 ViT-S/14, Fashion-MNIST 112 px", model, [pix(c) for c in _chunks(tr)],
            [pix(c) for c in _chunks(te)], feats)


def minilm_task(n_calib: int, n_eval: int):
    model, tok = zoo.load_minilm()
    data = D.rotten_tomatoes(seed=0, train_limit=n_calib, test_limit=n_eval)

    def enc(texts):
        e = tok(texts, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="pt")
        return {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]}

    feats = lambda h, b: zoo.sentence_embedding(h, b["attention_mask"])  # noqa: E731
    return ("all-MiniLM-L6-v2, Rotten Tomatoes (64 tokens)", model,
            [enc(c) for c in _chunks(data["train_texts"])], [enc(c) for c in _chunks(data["test_texts"])], feats)


TASKS = {"dinov2": dinov2_task, "minilm": minilm_task}


def collect_hessians(model, calib, held_out):
    """Capture once; Hessians of every FP8-weight GEMM input on calib and on held-out batches."""
    example = Inputs.of({k: v[:2] for k, v in calib[0].items()})
    ep = capture_program(model, example, True, False, None)
    gm = ep.graph_module
    placement = place(gm)
    readers = weight_readers(gm, placement)
    out = []
    for batches in (calib, held_out):
        obs = insert_hessian_observers(gm, placement)
        run_calibration(ep.module(), {}, batches, example, progress=False)
        remove_observers(gm)
        out.append(weight_hessians(obs))
    nodes = {n.name: n for n in gm.graph.nodes}
    tensors = state_tensors(ep)
    weights = {}
    for site in placement.sites:
        if site.is_weight:
            w = tensors[state_name(nodes[site.node])].detach().float()
            weights[site.key] = w.T if readers[site.key][0].transposed else w
    return weights, out[0], out[1]


def _noise(dw: torch.Tensor, h: torch.Tensor, total: torch.Tensor, tokens: int, c: torch.Tensor | None) -> float:
    """||X dW^T - 1 c^T||^2 from H = X^T X and total = X^T 1 (c: the bias shift, or None)."""
    dw = dw.double()
    noise = float(((dw @ h) * dw).sum())
    if c is not None:
        noise += -2.0 * float(c.double() @ (dw @ total)) + tokens * float(c.double() @ c.double())
    return noise


def gemm_sqnr(weights, cal, held):
    """key -> {variant: (calib SQNR dB, held-out SQNR dB)}."""
    rows = {}
    for key, w in weights.items():
        if key not in cal or key not in held:
            continue
        rows[key], cache = {}, {}
        for name, (rounding, axis, act, bc) in VARIANTS.items():
            s = fp8.portable_scale(wr.weight_scale(w)) if axis is None else channel_scale(w)  # the scales fxq.quantize uses
            if (rounding, axis, act) not in cache:  # bias correction reuses the codes without it
                cache[rounding, axis, act] = (wr.gptq_fp8(w, cal[key].hessian, s, act_order=act) if rounding == "gptq"
                                              else wr.round_nearest(w, s))
            codes = cache[rounding, axis, act]
            dw = w.double() - wr.dequantize(codes, s).double()
            c = dw @ cal[key].mean if bc else None  # bias shift fitted on the calibration tokens
            res = []
            for st in (cal[key], held[key]):
                signal = float(((w.double() @ st.hessian) * w.double()).sum())
                noise = _noise(dw, st.hessian, st.mean * st.tokens, st.tokens, c)
                res.append(10 * math.log10(signal / max(noise, 1e-300)))
            rows[key][name] = tuple(res)
    return rows


@torch.no_grad()
def end_model(model, calib, held_out, feats):
    """Feature cosine vs FP32 on held-out batches, per whole-model config."""
    ref = [feats(first_output(model(**b)).float(), b) for b in held_out]
    example = {k: v[:2] for k, v in calib[0].items()}
    out = {}
    for name, cfg in CONFIGS.items():
        t = time.perf_counter()
        qm = fxq.quantize(model, example, calib, cfg, progress=False)
        secs = time.perf_counter() - t
        got = [feats(first_output(qm(**b)).float(), b) for b in held_out]
        cos = torch.cat([torch.nn.functional.cosine_similarity(r, g, dim=-1) for r, g in zip(ref, got)])
        out[name] = (float(cos.mean()), float(cos.min()), secs)
    return out


def _table(rows, which: int) -> list[str]:
    names = list(VARIANTS)
    lines = ["| GEMM | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, r in rows.items():
        lines.append(f"| {key.replace(':linear.weight', '')} | " + " | ".join(f"{r[n][which]:.2f}" for n in names) + " |")
    for label, f in (("**mean**", lambda v: sum(v) / len(v)), ("**min**", min)):
        lines.append(f"| {label} | " + " | ".join(f"{f([r[n][which] for r in rows.values()]):.2f}" for n in names) + " |")
    gain = [r["gptq"][which] - r["rtn"][which] for r in rows.values()]
    lines.append(f"\nGPTQ - RTN (per-tensor): mean {sum(gain) / len(gain):+.2f} dB, min {min(gain):+.2f} dB, "
                 f"max {max(gain):+.2f} dB over {len(gain)} GEMMs")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="dinov2,minilm")
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--no-end-model", action="store_true", help="per-GEMM SQNR only")
    ap.add_argument("--out", default=str(ROOT / "results" / "weight_rounding.md"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    doc = ["# FP8 weight rounding: round-to-nearest vs GPTQ, per-tensor vs per-channel", "",
           f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()} "
           f"{os.cpu_count()} cores, torch {torch.__version__}, `python -m benchmarks.weight_rounding "
           f"--models {args.models} --n-calib {args.n_calib} --n-eval {args.n_eval}`", "",
           "Variants: " + "; ".join(f"`{n}` = rounding {r}, axis {a}" + (", act-order" if act else "")
                                    + (", bias correction" if bc else "") for n, (r, a, act, bc) in VARIANTS.items()),
           ""]
    for name in args.models.split(","):
        t0 = time.perf_counter()
        title, model, calib, held, feats = TASKS[name](args.n_calib, args.n_eval)
        weights, cal, hel = collect_hessians(model, calib, held)
        rows = gemm_sqnr(weights, cal, hel)
        doc += [f"## {title}", "", f"Per-GEMM output SQNR (dB), {args.n_calib} calibration samples "
                "(what GPTQ minimises):", "", *_table(rows, 0), "",
                f"Same weights, {args.n_eval} held-out samples:", "", *_table(rows, 1), ""]
        if not args.no_end_model:
            res = end_model(model, calib, held, feats)
            doc += ["Whole model (all roles FP8, torch fake-quant), feature cosine vs FP32 on the held-out samples "
                    f"(fxq.quantize; its GPTQ options: {GPTQ_OPTIONS}):", "",
                    "| config | mean cosine | min cosine | 1 - mean | quantize s |", "|---|---:|---:|---:|---:|"]
            doc += [f"| {n} | {m:.5f} | {lo:.5f} | {1 - m:.5f} | {s:.1f} |" for n, (m, lo, s) in res.items()]
            doc.append("")
        doc.append(f"({name}: {time.perf_counter() - t0:.0f} s)\n")
        print("\n".join(doc[-40:]), flush=True)
    text = "\n".join(doc)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
