"""fxq.lower on the Flux.1-dev transformer at full size (11.9B, random weights, BF16, on the GPU): numerics and speed.

Batch 1 at 1024x1024: 4096 image tokens + 512 text tokens; 2 calibration batches. Writes one JSON line per
measurement to --out as it goes (a run cut short keeps what it measured):
  fake-quant vs BF16 cosine; lowered (attention="fp16" / "fp8") vs fake-quant cosine, eager;
  attention="auto"'s choices; ms of lowered + torch.compile (fp8 and fp16 attention) and of BF16 eager / compile.

    python -m benchmarks.lower_flux --out $OUT/flux.jsonl            # on an H200 (needs diffusers)
    python -m benchmarks.lower_flux --smoke --out /tmp/flux.jsonl    # a 1+1-block Flux on CPU: checks the script
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import fxq
from benchmarks.gpu import median_ms
from benchmarks.gpu_fp8 import cosine, log

FULL = dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=4096, pooled_projection_dim=768, in_channels=64, guidance_embeds=True)
SMOKE = dict(num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=1,
             joint_attention_dim=64, pooled_projection_dim=32, in_channels=16, guidance_embeds=True,
             axes_dims_rope=(16, 56, 56))


def inputs(cfg, img: int, txt: int, seed: int, device) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device, torch.bfloat16)  # noqa: E731
    ids = torch.zeros(img, 3)
    side = int(img ** 0.5)
    ids[:, 1], ids[:, 2] = torch.arange(img) // side, torch.arange(img) % side
    return dict(hidden_states=r(1, img, cfg["in_channels"]), encoder_hidden_states=r(1, txt, cfg["joint_attention_dim"]),
                pooled_projections=r(1, cfg["pooled_projection_dim"]),
                timestep=torch.rand(1, generator=g).to(device, torch.bfloat16),
                img_ids=ids.to(device), txt_ids=torch.zeros(txt, 3, device=device),
                guidance=torch.full((1,), 3.5, device=device, dtype=torch.bfloat16), return_dict=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], help="rows to leave out: fp8-compile, fp16-compile, bf16-compile")
    a = ap.parse_args()
    from diffusers import FluxTransformer2DModel

    device = torch.device("cpu" if a.smoke else "cuda")
    cfg, (img, txt) = (SMOKE, (64, 16)) if a.smoke else (FULL, (4096, 512))
    out = open(a.out, "a")

    def put(**row):
        log(row)
        out.write(json.dumps(row) + "\n")
        out.flush()

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # random init straight in BF16 (the fp32 copy would be 48 GB)
    with torch.device(device):
        model = FluxTransformer2DModel(**cfg).eval()
    torch.set_default_dtype(torch.float32)
    put(row="model", params=sum(p.numel() for p in model.parameters()), device=str(device),
        gpu=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__)
    x = inputs(cfg, img, txt, 99, device)
    fwd = lambda m: m(**x)[0]  # noqa: E731
    with torch.no_grad():
        ref_bf16 = fwd(model)
        t = time.perf_counter()
        qm = fxq.quantize(model, inputs(cfg, img, txt, 0, device), [inputs(cfg, img, txt, s, device) for s in (1, 2)],
                          dynamic_batch=False, progress=False)
        put(row="quantize", seconds=round(time.perf_counter() - t, 1))
        ref = fwd(qm)
        put(row="fake-quant vs bf16", cosine=cosine(ref, ref_bf16))
        warm, iters = (1, 2) if a.smoke else (3, 10)
        lowered = {}
        for mode in ("fp8", "fp16", "auto"):  # numerics first: a run cut short keeps them
            low = fxq.lower(qm, torch.bfloat16, attention=mode)
            s = low.stats
            put(row=f"lowered attention={mode} eager vs fake-quant", cosine=cosine(fwd(low), ref),
                gemms_fp8=s.gemms_fp8, gemms_float=s.gemms_float, attention=str(s.attention_counts()))
            lowered[mode] = low
        del lowered["auto"]
        for mode, low in lowered.items():
            if f"{mode}-compile" in a.skip:
                continue
            fast = torch.compile(low)
            t = time.perf_counter()
            y = fwd(fast)
            put(row=f"lowered attention={mode} + compile", cosine=cosine(y, ref), compile_s=round(time.perf_counter() - t),
                ms=median_ms(lambda: fwd(fast), device, warm, iters))
            del fast
        del lowered, low
        del qm
        put(row="bf16 eager", ms=median_ms(lambda: fwd(model), device, warm, iters))
        if "bf16-compile" not in a.skip:
            fast = torch.compile(model)
            put(row="bf16 compile", ms=median_ms(lambda: fwd(fast), device, warm, iters))


if __name__ == "__main__":
    main()
