"""One model's rows of benchmarks/gpu_fp8.py: fxq.lower against the best FP16 PyTorch path, on the GPU.

One job: quantize the model, lower it (each --lowered variant), and time every row of the benchmark
per batch (FP16 eager, fxq's FP16 graph eager / compiled / in a CUDA graph, lowered eager / compiled /
in a CUDA graph) by CUDA events, with kernel tables on request, output cosines against the
fake-quant model, and the DINOv2 probe at batch 64. The raw results go to --json after every batch.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import fxq
from benchmarks.gpu import cosine, median_ms
from benchmarks.gpu_fp8_models import SIZE, hidden
from benchmarks.gpu_fp8_probe import probe_rows
from fxq.capture.program import capture
from fxq.conversion.graph_dtype import captured_dtype
from fxq.lower.driver import Buffers, cast_graph, fuse_attention


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


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


LOWERED = {"fp8-qkv": dict(keep_qkv_qdq=True), "fp16-qkv": dict(), "fp8-attn": dict(attention="fp8"),
           "fp8-auto": dict(attention="auto")}  # fxq.lower's keyword arguments per --lowered variant


def fp16_graph(model, example: torch.Tensor, device):
    """The FP16 comparison graph: fxq's capture with the same SDPA re-fusion, no quantizers."""
    gm = capture(model, {"pixel_values": example}, dynamic_batch=True)
    fused = fuse_attention(gm, "fp16", torch.float16, Buffers(gm, device)).fused
    cast_graph(gm, torch.float16, captured_dtype(gm.parameters()), device)
    return gm, fused


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
