"""fxq.lower on convolutional models, on a GPU: ms per batch against the model's FP16 eager forward.

Rows: HF ResNet-50 (ResNetConfig() defaults: bottleneck 1x1 convs, 3x3 convs) and ViT-base (its patch
embedding reads 3 channels: TensorRT's rules leave it float). Each model: FP16 eager; fxq.lower with the
conv pass (patch and 1x1 convs on torch._scaled_mm); fxq.lower with that pass off (those convs stay convs
with fake-quantized operands). Random weights; median of CUDA-event timings.

    python benchmarks/conv_lower.py --batch 64
"""
from __future__ import annotations

import argparse
import copy
import statistics
from unittest import mock

import torch
import transformers

import fxq
from fxq.lower import driver


def bench(fn, iters: int = 30) -> float:
    with torch.no_grad():
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
    return statistics.median(times)


def models():
    yield "resnet50", transformers.ResNetModel(transformers.ResNetConfig())
    yield "vit-base", transformers.ViTModel(transformers.ViTConfig(), add_pooling_layer=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    print("| model | batch | FP16 eager ms | lower ms | lower, conv pass off ms | convs on _scaled_mm | convs kept | GEMMs FP8 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, model in models():
        model = model.eval().cuda()
        x = torch.randn(args.batch, 3, 224, 224, device="cuda")
        qm = fxq.quantize(model, x[:2], [x[:8]], progress=False)
        fp16 = copy.deepcopy(model).half()
        t_fp16 = bench(lambda: fp16(x.half()))
        lowered = fxq.lower(qm)
        t_lower = bench(lambda: lowered(x))
        with mock.patch.object(driver, "lower_convs", lambda gm, dtype, buffers: (0, 0)):
            no_conv = fxq.lower(qm)
        t_off = bench(lambda: no_conv(x))
        s = lowered.stats
        print(f"| {name} | {args.batch} | {t_fp16:.2f} | {t_lower:.2f} | {t_off:.2f} | {s.convs_fp8} | {s.convs_float} "
              f"| {s.gemms_fp8} |", flush=True)


if __name__ == "__main__":
    main()
