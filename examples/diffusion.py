"""Diffusion transformers with fxq: record -> quantize -> drop in -> export ONNX -> compare images.

    python examples/diffusion.py --family dit --tiny            # seconds on a CPU (the test suite runs this)
    python examples/diffusion.py --family flux --device cuda    # Flux.1-dev's transformer config, BF16
    python examples/diffusion.py --family sd3 --pretrained stabilityai/stable-diffusion-3.5-large

Without --pretrained the weights are RANDOM, at the real configs (DiT-XL/2-256, SD3-medium, Flux.1-dev)
or at tiny ones with --tiny: the images are noise-like, and what is measured is how far the FP8
pipeline's images are from the float pipeline's on the same seed, not image quality. With
--pretrained the same code loads the pipeline with `from_pretrained` (the hub or a local folder).
Random-weight SD3 and Flux pipelines have no text encoders: they are given random prompt embeddings.

Steps: the transformer's calls are recorded while the float pipeline runs (fxq.record_inputs),
fxq.quantize calibrates on them, the quantized model replaces `pipe.transformer`, the pipeline runs
again on the same seed, fxq.compare_steps measures the error per denoising step, and the ONNX file
is written and checked for TensorRT readiness.
"""
from __future__ import annotations

import argparse
import json
import time
import weakref
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

import fxq

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def _vae(tiny: bool, latent: int, **real):
    from diffusers import AutoencoderKL

    if tiny:
        return AutoencoderKL(block_out_channels=(8, 16), latent_channels=latent, layers_per_block=1, norm_num_groups=4,
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             shift_factor=0.0)
    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=latent, layers_per_block=2,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **real)


def dit(tiny: bool, batch: int):
    """DiT-XL/2-256 (DiTTransformer2DModel's defaults), or a 2-layer one; class-conditioned, no text."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    size = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, sample_size=8) if tiny else {}
    transformer = DiTTransformer2DModel(in_channels=4, out_channels=8, patch_size=2, num_embeds_ada_norm=1000,
                                        norm_type="ada_norm_zero", **size)
    pipe = DiTPipeline(transformer=transformer, vae=_vae(tiny, 4, shift_factor=0.0), scheduler=DDIMScheduler())
    return pipe, {"class_labels": list(range(1, batch + 1))}


def sd3(tiny: bool, batch: int):
    """SD3-medium's transformer (SD3Transformer2DModel's defaults), or a 2-layer one."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    size = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64,
                pos_embed_max_size=16) if tiny else {}
    transformer = SD3Transformer2DModel(**size)
    c = transformer.config
    vae = _vae(tiny, c.in_channels, shift_factor=0.0609, scaling_factor=1.5305)
    pipe = StableDiffusion3Pipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    g = torch.Generator().manual_seed(7)  # random "prompts": no text encoders without pretrained weights
    embeds = lambda *shape: torch.randn(batch, *shape, generator=g)  # noqa: E731
    tokens = 8 if tiny else 77 + 256
    side = c.sample_size * pipe.vae_scale_factor
    return pipe, {"prompt_embeds": embeds(tokens, c.joint_attention_dim), "negative_prompt_embeds": embeds(tokens, c.joint_attention_dim),
                  "pooled_prompt_embeds": embeds(c.pooled_projection_dim),
                  "negative_pooled_prompt_embeds": embeds(c.pooled_projection_dim), "height": side, "width": side}


def flux(tiny: bool, batch: int):
    """Flux.1-dev's transformer (FluxTransformer2DModel's defaults, guidance-distilled), or a 2-block one."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    size = dict(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)) if tiny else {}
    transformer = FluxTransformer2DModel(guidance_embeds=True, **size)
    c = transformer.config
    vae = _vae(tiny, c.in_channels // 4, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
               use_post_quant_conv=False)
    pipe = FluxPipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    g = torch.Generator().manual_seed(7)
    tokens = 8 if tiny else 512
    side = 32 if tiny else 1024
    return pipe, {"prompt_embeds": torch.randn(batch, tokens, c.joint_attention_dim, generator=g),
                  "pooled_prompt_embeds": torch.randn(batch, c.pooled_projection_dim, generator=g),
                  "height": side, "width": side, "max_sequence_length": tokens}


FAMILIES = {"dit": dit, "sd3": sd3, "flux": flux}
PROMPTS = {"dit": {"class_labels": [207, 360]}, "sd3": {"prompt": ["a red fox in snow", "a lighthouse at dusk"]},
           "flux": {"prompt": ["a red fox in snow", "a lighthouse at dusk"]}}


def build(family: str, tiny: bool, pretrained: str | None, dtype: torch.dtype, device: str):
    """(pipeline, call arguments): random weights at the family's config, or from_pretrained."""
    if pretrained is not None:
        from diffusers import DiffusionPipeline

        pipe, kwargs = DiffusionPipeline.from_pretrained(pretrained, torch_dtype=dtype), dict(PROMPTS[family])
    else:
        torch.manual_seed(0)
        pipe, kwargs = FAMILIES[family](tiny, batch=2)
        kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe, {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def image_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Cosine and PSNR (images in [0, 1]) between two image batches."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    mse = float(np.mean((a - b) ** 2))
    return {"cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))}


@dataclass
class Result:
    family: str
    calls: int
    calibration_batches: int
    image: dict[str, float]  # quantized pipeline's images against the float pipeline's, same seed
    worst_step_cosine: float
    onnx: str
    ready: bool
    gemms_ready: int
    attention_ready: str  # "ready/total"
    seconds: dict[str, float]
    # For a caller that inspects further (the tests): not printed.
    pipe: object = field(default=None, repr=False)  # its transformer is the quantized model now
    recording: object = field(default=None, repr=False)  # fxq.record_inputs' Recording of the float run
    per_step: object = field(default=None, repr=False)  # fxq.compare_steps' StepErrors
    float_transformer: object = field(default=None, repr=False)  # a weakref: dead once the pipeline dropped it

    def summary(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.repr}


def run(family: str, tiny: bool = False, pretrained: str | None = None, steps: int = 8, seed: int = 0,
        dtype: torch.dtype = torch.bfloat16, device: str = "cpu", out: Path = Path("diffusion_out"),
        max_batches: int = 16, onnx_dtype: torch.dtype | None = None) -> Result:
    from onnx_post.checker import check_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe, kwargs = build(family, tiny, pretrained, dtype, device)
    images = lambda: pipe(**kwargs, num_inference_steps=steps, output_type="np",  # noqa: E731
                          generator=torch.Generator(device).manual_seed(seed)).images
    seconds = {}
    t = time.perf_counter()
    with torch.no_grad(), fxq.record_inputs(pipe.transformer, max_batches=max_batches) as rec:
        reference = images()
    seconds["float_pipeline"] = time.perf_counter() - t
    float_transformer = pipe.transformer
    t = time.perf_counter()
    qm = fxq.quantize(float_transformer, rec.example, rec.batches, progress=False)
    seconds["quantize"] = time.perf_counter() - t
    per_step = fxq.compare_steps(qm, float_transformer, rec)
    per_step.plot(out / f"{family}_steps.png")
    pipe.transformer = qm  # the drop-in: the pipeline itself is unchanged
    float_ref = weakref.ref(float_transformer)
    del float_transformer  # nothing holds it now: qm took what it needs at quantize time
    t = time.perf_counter()
    with torch.no_grad():
        quantized = images()
    seconds["fp8_pipeline"] = time.perf_counter() - t
    t = time.perf_counter()
    onnx_dtype = onnx_dtype or (torch.float16 if dtype == torch.float32 else dtype)
    exported = qm.export_onnx(out / f"{family}_transformer.onnx", dtype=onnx_dtype)
    seconds["export_onnx"] = time.perf_counter() - t
    rep = check_model(exported.path)
    attention = f"{sum(a.ready for a in rep.attention)}/{len(rep.attention)}"
    return Result(family, rec.calls, qm.calibration_batches, image_similarity(reference, quantized),
                  min(r.cosine for r in per_step.rows), str(exported.path), rep.ready,
                  sum(g.ready for g in rep.gemms), attention, seconds, pipe, rec, per_step, float_ref)


def main(argv=None) -> Result:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", choices=sorted(FAMILIES), default="dit")
    p.add_argument("--tiny", action="store_true", help="tiny configs (random weights), seconds on a CPU")
    p.add_argument("--pretrained", metavar="PATH_OR_ID", help="load the pipeline with from_pretrained instead")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--onnx-dtype", choices=sorted(DTYPES), help="default: float16 for a float32 model, else --dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-batches", type=int, default=16, help="recorded calls kept for calibration")
    p.add_argument("--out", type=Path, default=Path("diffusion_out"))
    a = p.parse_args(argv)
    res = run(a.family, a.tiny, a.pretrained, a.steps, a.seed, DTYPES[a.dtype], a.device, a.out, a.max_batches,
              DTYPES[a.onnx_dtype] if a.onnx_dtype else None)
    print(json.dumps(res.summary(), indent=1))
    return res


if __name__ == "__main__":
    main()
