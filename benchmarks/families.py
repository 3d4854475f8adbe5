"""The architecture matrix as data: Hugging Face model families fxq must handle without per-model code.

Each Family names a transformers model class, its config class, config overrides for a small (test)
and a default (benchmark) size, and an example-input factory. Models are built from configs with
random weights (no model hub). `Family.build(size, attn)` returns (model, example, calib_batches).

The small sizes keep head size at 16 or 32 (inside TensorRT's FP8 MHA window) and 2 layers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # torchvision fallback notices are noise here

import torch  # noqa: E402


# -- example-input factories: (config, batch, generator, seq) -> dict of keyword inputs --------------
# `seq` is the token count for text; image and audio sizes come from the config.
def pixels(cfg, batch: int, g: torch.Generator, seq: int) -> dict:
    vision = getattr(cfg, "vision_config", cfg)
    return {"pixel_values": torch.randn(batch, vision.num_channels, vision.image_size, vision.image_size, generator=g)}


def latents(cfg, batch: int, g: torch.Generator, seq: int) -> dict:
    """A diffusion UNet's inputs: noisy latents, one timestep per example, `seq` text-encoder tokens."""
    return {"sample": torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g),
            "timestep": torch.randint(0, 1000, (batch,), generator=g),
            "encoder_hidden_states": torch.randn(batch, seq, cfg.cross_attention_dim, generator=g)}


class UNetSample(torch.nn.Module):
    """diffusers.UNet2DConditionModel from a namespace of its keyword arguments, returning the sample tensor."""

    def __init__(self, cfg):
        import diffusers

        super().__init__()
        self.unet = diffusers.UNet2DConditionModel(**{k: v for k, v in vars(cfg).items() if not k.startswith("_")})

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states).sample


def _tokens(cfg, batch: int, seq: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)


def padded_text(cfg, batch: int, g: torch.Generator, seq: int) -> dict:
    """Token ids plus a padding mask with trailing zeros in some rows (every row keeps most tokens)."""
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b in range(batch):
        pad = (5 + 3 * b) % (seq // 2)  # 5, 0, 3, 6, ... padded positions per row
        mask[b, seq - pad:] = 0
    return {"input_ids": _tokens(cfg, batch, seq, g), "attention_mask": mask}


def text(cfg, batch: int, g: torch.Generator, seq: int) -> dict:
    return {"input_ids": _tokens(cfg, batch, seq, g)}


def mel(cfg, batch: int, g: torch.Generator, seq: int) -> dict:
    # Whisper's encoder insists on exactly 2 * max_source_positions input frames.
    return {"input_features": torch.randn(batch, cfg.num_mel_bins, 2 * cfg.max_source_positions, generator=g)}


@dataclass(frozen=True)
class Family:
    name: str
    model: str | type  # transformers class, "module:Class" for classes not exported at the top level, or a class
    config: str  # transformers config class (or "module:Class")
    inputs: Callable
    small: dict
    default: dict = field(default_factory=dict)
    attn: tuple[str, ...] = ("eager", "sdpa")
    seq: tuple[int, int] = (16, 128)  # text length at (small, default) size
    note: str = ""
    onnx_dtype: str = "float16"  # the dtype the matrix exports in

    def _cls(self, spec: str):
        import importlib

        import transformers

        if not isinstance(spec, str):
            return spec
        if ":" in spec:
            mod, name = spec.split(":")
            return getattr(importlib.import_module(mod), name)
        return getattr(transformers, spec)

    def make_config(self, size: str = "small", attn: str = "eager"):
        overrides = self.small if size == "small" else self.default
        cfg = self._cls(self.config)(**overrides)
        cfg._attn_implementation = attn
        return cfg

    def build(self, size: str = "small", attn: str = "eager", batch: int = 2, calib: int = 2, seed: int = 0):
        """(model in eval mode, example inputs, calibration batches), all deterministic in `seed`."""
        cfg = self.make_config(size, attn)
        torch.manual_seed(seed)
        model = self._cls(self.model)(cfg).eval()
        g = torch.Generator().manual_seed(seed)
        seq = self.seq[0] if size == "small" else self.seq[1]
        example = self.inputs(cfg, batch, g, seq)
        batches = [self.inputs(cfg, batch, g, seq) for _ in range(calib)]
        return model, example, batches


_TINY_TEXT = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, max_position_embeddings=64)
_TINY_VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                    image_size=32, patch_size=8)

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("vit", "ViTModel", "ViTConfig", pixels, _TINY_VISION),
    Family("dinov2", "Dinov2Model", "Dinov2Config", pixels, dict(_TINY_VISION, mlp_ratio=2),
           dict(image_size=224, patch_size=14), note="default config at 224 px"),
    Family("swin", "SwinModel", "SwinConfig", pixels,
           dict(image_size=32, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 2], window_size=4,
                mlp_ratio=2.0, drop_path_rate=0.0),
           note="window attention, relative position bias, shifted-window masks"),
    Family("bert", "BertModel", "BertConfig", padded_text, _TINY_TEXT, note="padding mask"),
    Family("distilbert", "DistilBertModel", "DistilBertConfig", padded_text,
           dict(vocab_size=512, dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_position_embeddings=64)),
    Family("clip_vision", "CLIPVisionModel", "CLIPVisionConfig", pixels, _TINY_VISION),
    Family("clip_text", "CLIPTextModel", "CLIPTextConfig", text,
           dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=128, max_position_embeddings=64), seq=(16, 77), note="causal mask"),
    Family("gpt2", "GPT2Model", "GPT2Config", text,
           dict(vocab_size=512, n_embd=64, n_layer=2, n_head=2, n_positions=64, use_cache=False),
           dict(use_cache=False),
           note="Conv1D linears (addmm), causal mask, scale by division"),
    Family("whisper_encoder", "transformers.models.whisper.modeling_whisper:WhisperEncoder", "WhisperConfig", mel,
           dict(vocab_size=512, num_mel_bins=16, d_model=64, encoder_layers=2, encoder_attention_heads=2,
                encoder_ffn_dim=128, max_source_positions=32, decoder_layers=1, decoder_attention_heads=2),
           note="default config: 1500 positions (3000 mel frames)"),
    Family("t5_encoder", "T5EncoderModel", "T5Config", padded_text,
           dict(vocab_size=512, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2),
           note="relative position bias, no attention scale"),
]}

# Not on the list, each with a spelling the listed ones lack; tests check they need no new code.
UNLISTED: dict[str, Family] = {f.name: f for f in [
    Family("deberta_v2", "DebertaV2Model", "DebertaV2Config", padded_text, _TINY_TEXT, attn=("eager",),
           note="3-D probs view between softmax and BMM2, scale on K"),
    Family("swinv2", "Swinv2Model", "Swinv2Config", pixels,
           dict(image_size=16, patch_size=2, embed_dim=32, depths=[2], num_heads=[2], window_size=4,
                mlp_ratio=2.0, drop_path_rate=0.0), attn=("eager",),
           note="cosine attention: per-head learned scale [heads, 1, 1] after BMM1"),
    Family("siglip_vision", "SiglipVisionModel", "SiglipVisionConfig", pixels, _TINY_VISION, attn=("eager",),
           note="nn.MultiheadAttention pooling head: Q/K/V weights split from one in_proj_weight"),
]}

# Convolutional and hybrid families (FP8 convs, tests/test_conv.py). Each small config holds every conv rule:
# an RGB stem or 4-channel latent (conv_channels_not_16), depthwise convs (conv_grouped), 7x7 kernels.
_MOBILEVIT_SMALL = dict(image_size=32, patch_size=2, hidden_sizes=[32, 32, 32], num_attention_heads=2,
                        neck_hidden_sizes=[16, 16, 32, 32, 32, 32, 64], expand_ratio=2.0)
CONV_FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("convnext", "ConvNextModel", "ConvNextConfig", pixels,
           dict(hidden_sizes=[16, 32], depths=[1, 1], patch_size=4, num_stages=2, image_size=32),
           attn=("eager",), note="ConvNeXt-T: 3-channel patchify stem, depthwise 7x7 convs"),
    Family("resnet", "ResNetModel", "ResNetConfig", pixels,
           dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="bottleneck", image_size=32),
           dict(image_size=224), attn=("eager",), note="ResNet-50 at 224 px: 7x7 RGB stem"),
    Family("mobilevit", "MobileViTModel", "MobileViTConfig", pixels, _MOBILEVIT_SMALL, attn=("eager",),
           note="MobileViT-S: inverted residuals (depthwise) around transformer blocks"),
    Family("sam_vision", "SamVisionModel", "SamVisionConfig", pixels,
           dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, mlp_dim=128, image_size=64, patch_size=8,
                output_channels=32, window_size=4, global_attn_indexes=[1]),
           dict(image_size=256), attn=("eager",),
           note="SAM ViT-B image encoder and its conv neck at 256 px (1024 in SAM): windowed and global attention "
                "with decomposed relative positions"),
    Family("sd_unet", UNetSample, "types:SimpleNamespace", latents,
           dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
           dict(sample_size=32, in_channels=4, out_channels=4, block_out_channels=(128, 256, 512, 512),
                cross_attention_dim=768),
           attn=("eager",), seq=(6, 77), onnx_dtype="float32",
           note="diffusers UNet2DConditionModel, Stable Diffusion 1.x blocks at 0.4x width (head sizes 16-64), "
                "32x32 latents, 77 text tokens, diffusers' own attention (SDPA); FP32 ONNX: its FP16 export stops at "
                "the float32 timestep embedding"),
]}
