"""The models and data of benchmarks/gpu_fp8.py: ViT-base, DINOv2 ViT-S/14 and Fashion-MNIST at 224 px.

One job: build what the benchmark times and probes. ViT-base from transformers' ViTConfig() defaults
(random weights; a tiny one for --smoke), DINOv2 from fxq's zoo or a saved state dict, both with SDPA
attention; Fashion-MNIST images as ImageNet-normalized RGB pixels; `hidden`, a model output's last
hidden state.
"""
from __future__ import annotations

import torch
import transformers

SIZE = 224


def hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


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
