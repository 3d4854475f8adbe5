"""fxq.lower on diffusion transformers at full size (random weights, BF16, on the GPU): numerics and speed.

  flux  Flux.1-dev transformer (11.9B), batch 1 at 1024x1024: 4096 image tokens + 512 text tokens
  sd3   SD3.5-Large transformer (8.1B), batch 1 at 1024x1024: 4096 image tokens + 333 text tokens
  dit   DiT-XL/2 (675M) at 512x512: 1024 tokens, head dim 72, batch 2 (one classifier-free-guided step)
2 calibration batches. Writes one JSON line per measurement to --out as it goes (a run cut short keeps what it
measured): fake-quant vs BF16 cosine; the fake-quant model's own floor (against itself on an input nudged by
about one BF16 ulp: FP8 codes on a rounding boundary flip); lowered (attention="fp16" / "fp8") vs fake-quant cosine, eager;
attention="auto"'s choices; ms of lowered + torch.compile (fp8 and fp16 attention) and of BF16 eager / compile.

    python -m benchmarks.lower_diffusion --model flux --out $OUT/flux.jsonl   # on an H200 (needs diffusers)
    python -m benchmarks.lower_diffusion --model dit --smoke --out /tmp/dit.jsonl   # tiny, on CPU: checks the script
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import fxq
from benchmarks.gpu import cosine, median_ms
from benchmarks.gpu_fp8_bench import log

FLUX = dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=4096, pooled_projection_dim=768, in_channels=64, guidance_embeds=True)
FLUX_SMOKE = dict(num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=1,
             joint_attention_dim=64, pooled_projection_dim=32, in_channels=16, guidance_embeds=True,
             axes_dims_rope=(16, 56, 56))


SD3 = dict(num_layers=38, attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,  # SD3.5-Large
           caption_projection_dim=2432, pooled_projection_dim=2048, in_channels=16, out_channels=16, patch_size=2,
           sample_size=128, pos_embed_max_size=192, qk_norm="rms_norm")
SD3_SMOKE = {**SD3, "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 32, "joint_attention_dim": 64,
             "caption_projection_dim": 64, "pooled_projection_dim": 32, "sample_size": 16, "pos_embed_max_size": 16}


def sd3_inputs(cfg, seed: int, device, smoke: bool) -> dict:
    """A 1024x1024 latent (128x128x16: 4096 tokens after 2x2 patches) and 77 CLIP + 256 T5 text tokens."""
    txt = 16 if smoke else 333
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device, torch.bfloat16)  # noqa: E731
    side = cfg["sample_size"]
    return dict(hidden_states=r(1, cfg["in_channels"], side, side), encoder_hidden_states=r(1, txt, cfg["joint_attention_dim"]),
                pooled_projections=r(1, cfg["pooled_projection_dim"]),
                timestep=(1000 * torch.rand(1, generator=g)).to(device, torch.bfloat16), return_dict=False)


DIT = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
           sample_size=64, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero")
DIT_SMOKE = {**DIT, "num_attention_heads": 2, "num_layers": 1, "sample_size": 8}


def flux_inputs(cfg, seed: int, device, smoke: bool) -> dict:
    img, txt = (64, 16) if smoke else (4096, 512)
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


def dit_inputs(cfg, seed: int, device, smoke: bool) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)
    side = cfg["sample_size"]
    return dict(hidden_states=torch.randn(2, 4, side, side, generator=g).to(device, torch.bfloat16),
                timestep=torch.randint(0, 1000, (2,), generator=g).to(device),
                class_labels=torch.tensor([seed % 1000, 1000], device=device), return_dict=False)  # 1000: the null class


def build(name: str, cfg):
    import diffusers
    return {"flux": diffusers.FluxTransformer2DModel, "sd3": diffusers.SD3Transformer2DModel,
            "dit": diffusers.DiTTransformer2DModel}[name](**cfg)


MODELS = {"flux": (FLUX, FLUX_SMOKE, flux_inputs), "sd3": (SD3, SD3_SMOKE, sd3_inputs),
          "dit": (DIT, DIT_SMOKE, dit_inputs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=list(MODELS), default="flux")
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], help="rows to leave out: fp8-compile, fp16-compile, bf16-compile")
    a = ap.parse_args()
    device = torch.device("cpu" if a.smoke else "cuda")
    full, smoke, make_inputs = MODELS[a.model]
    cfg = smoke if a.smoke else full
    inputs = lambda seed: make_inputs(cfg, seed, device, a.smoke)  # noqa: E731
    out = open(a.out, "a")

    def put(**row):
        log(row)
        out.write(json.dumps(row) + "\n")
        out.flush()

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # random init straight in BF16 (the fp32 copy would be 48 GB)
    with torch.device(device):
        model = build(a.model, cfg).eval()
    torch.set_default_dtype(torch.float32)
    put(row="model", model=a.model, params=sum(p.numel() for p in model.parameters()), device=str(device),
        gpu=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__)
    x = inputs(99)
    fwd = lambda m, kw=x: m(**kw)[0]  # noqa: E731
    with torch.no_grad():
        ref_bf16 = fwd(model)
        t = time.perf_counter()
        qm = fxq.quantize(model, inputs(0), [inputs(s) for s in (1, 2)],
                          dynamic_batch=False, progress=False)
        put(row="quantize", seconds=round(time.perf_counter() - t, 1))
        ref = fwd(qm)
        put(row="fake-quant vs bf16", cosine=cosine(ref, ref_bf16))
        # A 1e-6 absolute nudge vanishes in BF16, so nudge each input element by about one unit in its last place.
        nudged = {k: v + v.abs() * torch.finfo(v.dtype).eps * torch.randn_like(v)
                  if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in x.items()}
        put(row="floor: fake-quant vs fake-quant(x nudged by ~1 ulp)", cosine=cosine(fwd(qm, nudged), ref))
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
