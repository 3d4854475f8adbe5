"""fxq.lower on convolutional and hybrid models, on a GPU: ms per batch against the model's best FP16 path.

Rows (random weights, FP16, median of CUDA-event timings):
  resnet50  HF ResNet-50 (ResNetConfig() defaults): bottleneck 1x1 convs and 3x3 convs, BatchNorm
  unet      diffusers UNet2DConditionModel() defaults (SD-1.x layout: ResNet blocks around cross-attention),
            batch 2 (one guided step), 64x64 latents, 77 text tokens
  vit-base  HF ViT-base: its patch embedding reads 3 channels, which TensorRT's rules leave float
Each model: FP16 eager and FP16 torch.compile (on conv nets also compiled with NHWC weights and input; the best is "best FP16"); fxq.lower eager
and compiled (on conv nets also with NHWC input); fxq.lower compiled with convs=False (every conv stays a conv with fake-quantized operands), which
shows what running patch and 1x1 convs on torch._scaled_mm buys. Writes one JSON line per row to --out as it goes.

Accuracy, like with like: the lowered model computes in FP16, so its reference is the fake-quant program converted
to FP16 as the ONNX export converts it (fxq.conversion.graph_dtype.program_in_dtype: the FP16 graph's own
numerics), `lower_cosine_vs_fake_quant`. The FP32 fake-quant model is kept as a second reference
(`lower_cosine_vs_fake_quant_fp32`), with what FP16 alone costs against FP32 on the same random weights:
`fp16_vs_fp32_cosine` (the plain model, no FP8) and `fake_quant_fp16_vs_fp32_cosine` (the fake-quant program).

    python -m benchmarks.conv_lower --out $OUT/conv.jsonl              # on an H200 (unet needs diffusers)
    python -m benchmarks.conv_lower --smoke --out /tmp/conv.jsonl      # tiny configs on CPU: checks the script
"""
from __future__ import annotations

import argparse
import copy
import json

import torch
import transformers

import fxq
from benchmarks.gpu import cosine, median_ms
from fxq.conversion.graph_dtype import program_in_dtype


def resnet(smoke: bool, batch: int, device):
    cfg = transformers.ResNetConfig(hidden_sizes=[32, 64], depths=[1, 1], embedding_size=16) if smoke \
        else transformers.ResNetConfig()
    side = 64 if smoke else 224
    return transformers.ResNetModel(cfg), dict(pixel_values=torch.randn(batch, 3, side, side))


def vit(smoke: bool, batch: int, device):
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                                 image_size=32, patch_size=16) if smoke else transformers.ViTConfig()
    side = cfg.image_size
    return transformers.ViTModel(cfg, add_pooling_layer=False), dict(pixel_values=torch.randn(batch, 3, side, side))


def unet(smoke: bool, batch: int, device):
    from diffusers import UNet2DConditionModel
    kw = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, layers_per_block=1,
              norm_num_groups=16, attention_head_dim=8, sample_size=16) if smoke else {}
    model = UNet2DConditionModel(**kw)
    side, txt = model.config.sample_size or 64, model.config.cross_attention_dim
    return model, dict(sample=torch.randn(batch, 4, side, side), timestep=torch.full((batch,), 500.0),
                       encoder_hidden_states=torch.randn(batch, 77, txt), return_dict=False)


MODELS = {"resnet50": (resnet, 64), "unet": (unet, 2), "vit-base": (vit, 64)}
CHANNELS_LAST = {"resnet50", "unet"}  # conv nets: cuDNN's tensor-core convs prefer NHWC, so the best FP16 path may too


def first(y):
    return y[0] if isinstance(y, (tuple, list)) else getattr(y, "last_hidden_state", y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    device = torch.device("cpu" if a.smoke else "cuda")
    out = open(a.out, "a")
    warm, iters = (1, 2) if a.smoke else (5, 30)
    print("| model | batch | FP16 eager ms | FP16 compile ms | lower ms | lower+compile ms | lower+compile, convs=False ms "
          "| best FP16 / lower+compile | convs on _scaled_mm | convs kept | GEMMs FP8 | lower vs fake-quant FP16 cosine "
          "| (vs fake-quant FP32) | FP16 vs FP32 cosine: model, fake-quant |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.models:
        build, batch = MODELS[name]
        torch.manual_seed(0)
        model, kw = build(a.smoke, 2 if a.smoke else batch, device)
        model = model.eval().to(device)
        kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        kw16 = {k: v.half() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        with torch.no_grad():
            qm = fxq.quantize(model, kw, [kw], dynamic_batch=False, progress=False)
            y_fp32 = first(model(**kw)).float()
        fp16 = copy.deepcopy(model).half()
        del model
        row = dict(model=name, batch=next(iter(kw.values())).shape[0],
                   device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
        with torch.no_grad():
            row["fp16_vs_fp32_cosine"] = cosine(first(fp16(**kw16)).float(), y_fp32)
            ref32 = first(qm(**kw)).float()
            ref = first(program_in_dtype(qm.program, torch.float16).module()(**kw16)).float()
        row["fake_quant_fp16_vs_fp32_cosine"] = cosine(ref, ref32)
        del y_fp32
        row["fp16_eager_ms"] = median_ms(lambda: fp16(**kw16), device, warm, iters)
        fast = torch.compile(fp16)
        row["fp16_compile_ms"] = median_ms(lambda: fast(**kw16), device, warm, iters)
        nhwc = lambda kw: {k: v.contiguous(memory_format=torch.channels_last) if isinstance(v, torch.Tensor)  # noqa: E731
                           and v.dim() == 4 else v for k, v in kw.items()}
        if name in CHANNELS_LAST:
            fp16_nhwc, kw16_nhwc = torch.compile(copy.deepcopy(fp16).to(memory_format=torch.channels_last)), nhwc(kw16)
            row["fp16_compile_nhwc_ms"] = median_ms(lambda: fp16_nhwc(**kw16_nhwc), device, warm, iters)
        for label, convs in (("lower", True), ("lower_convs_off", False)):
            low = fxq.lower(qm, convs=convs)
            with torch.no_grad():
                y = first(low(**kw)).float()
            row[f"{label}_cosine_vs_fake_quant"] = cosine(y, ref)  # the FP16 program: like with like
            row[f"{label}_cosine_vs_fake_quant_fp32"] = cosine(y, ref32)
            if convs:
                row.update(convs_fp8=low.stats.convs_fp8, convs_float=low.stats.convs_float, gemms_fp8=low.stats.gemms_fp8)
                row["lower_ms"] = median_ms(lambda: low(**kw), device, warm, iters)
            fast = torch.compile(low)
            row[f"{label}_compile_ms"] = median_ms(lambda: fast(**kw), device, warm, iters)
            if convs and name in CHANNELS_LAST:  # NHWC input: a 1x1 conv as a GEMM then needs no transpose
                kw_nhwc = nhwc(kw)
                row["lower_compile_nhwc_ms"] = median_ms(lambda: fast(**kw_nhwc), device, warm, iters)
        out.write(json.dumps(row) + "\n")
        out.flush()
        best = min(row["fp16_eager_ms"], row["fp16_compile_ms"], row.get("fp16_compile_nhwc_ms", float("inf")))
        mine = min(row["lower_compile_ms"], row.get("lower_compile_nhwc_ms", float("inf")))
        print(f"| {name} | {row['batch']} | {row['fp16_eager_ms']:.2f} | {row['fp16_compile_ms']:.2f} | {row['lower_ms']:.2f} "
              f"| {row['lower_compile_ms']:.2f} | {row['lower_convs_off_compile_ms']:.2f} | "
              f"{best / mine:.2f}x | {row['convs_fp8']} | {row['convs_float']} | {row['gemms_fp8']} "
              f"| {row['lower_cosine_vs_fake_quant']:.4f} | {row['lower_cosine_vs_fake_quant_fp32']:.4f} "
              f"| {row['fp16_vs_fp32_cosine']:.4f}, {row['fake_quant_fp16_vs_fp32_cosine']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
