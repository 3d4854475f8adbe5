"""The linear probe of benchmarks/gpu_fp8.py: does fxq.lower change DINOv2's Fashion-MNIST predictions?

One job: fit a probe on the fake-quant model's features, then score the fake-quant and the lowered
model's test features with it, with a paired 95% CI of the accuracy difference, prediction agreement
and feature cosine (and an FP32 probe's accuracy for reference).
"""
from __future__ import annotations

import math

import torch

from benchmarks.gpu_fp8_models import fmnist_pixels, hidden


def features(fn, pixels: torch.Tensor, batch: int) -> torch.Tensor:
    """DINOv2 linear-eval features (CLS ++ mean patch) in fixed-size batches (padded), for static shapes."""
    out = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            x = pixels[i:i + batch]
            n = len(x)
            if n < batch:
                x = torch.cat([x, x[:1].expand(batch - n, *x.shape[1:])])
            h = hidden(fn(x)).float()[:n]
            out.append(torch.cat([h[:, 0], h[:, 1:].mean(1)], -1).cpu())
    return torch.cat(out)


def probe_rows(model, qm, low_fn, data, device, batch) -> dict:
    from benchmarks.probe import accuracy, fit_linear_probe

    tr, te = data["train"], data["test"]
    px_tr, px_te = fmnist_pixels(tr[0], device), fmnist_pixels(te[0], device)
    f_qm_tr = features(lambda x: qm(pixel_values=x), px_tr, batch)
    f_qm_te = features(lambda x: qm(pixel_values=x), px_te, batch)
    f_low_te = features(low_fn, px_te.half(), batch)
    f32_tr = features(lambda x: model(pixel_values=x), px_tr, batch)
    f32_te = features(lambda x: model(pixel_values=x), px_te, batch)
    p_qm, p32 = fit_linear_probe(f_qm_tr, tr[1]), fit_linear_probe(f32_tr, tr[1])
    y = te[1].long()
    c_qm = (p_qm.predict(f_qm_te) == y).double()
    c_low = (p_qm.predict(f_low_te) == y).double()
    d = c_low - c_qm
    half = 1.96 * d.std().item() / math.sqrt(len(d))
    return {"n_train": len(tr[1]), "n_test": len(y), "fp32 acc": accuracy(p32, f32_te, y),
            "fake-quant acc": c_qm.mean().item(), "lowered acc": c_low.mean().item(),
            "delta pp": 100 * d.mean().item(), "delta 95% CI pp": 100 * half,
            "prediction agreement": (p_qm.predict(f_low_te) == p_qm.predict(f_qm_te)).double().mean().item(),
            "feature cosine (mean)": torch.nn.functional.cosine_similarity(f_low_te, f_qm_te, dim=-1).mean().item()}
