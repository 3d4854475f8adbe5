"""Tiny random-weight convolutional and hybrid models (no hub, no timm/torchvision) for tests/test_conv.py."""
import importlib.util
import sys
from pathlib import Path

import torch
import transformers


class ResBlock(torch.nn.Module):
    """An RGB stem, a GroupNorm read by two convs (one quantizer), a depthwise conv, a 4-channel head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, 32)
        self.c1 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.c2 = torch.nn.Conv2d(32, 32, 1)
        self.dw = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.out = torch.nn.Conv2d(32, 4, 1)

    def forward(self, x):
        h = self.norm(self.stem(x))
        return self.out(self.dw(torch.relu(self.c1(h)) + self.c2(h)))


def _matrix_families() -> dict:
    """benchmarks/families.py's conv and hybrid families, loaded by path (as tests/test_families.py does)."""
    name = "fxq_bench_families"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / "families.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name].CONV_FAMILIES


def family(name: str):
    """(model in eval mode, example inputs) for one family."""
    torch.manual_seed(0)
    matrix = _matrix_families()
    if name in matrix:  # the architecture matrix's small configs: convnext, resnet, mobilevit, sam_vision, sd_unet
        model, example, _ = matrix[name].build("small")
        return model, example
    if name == "vit":
        cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                                     image_size=16, patch_size=4, num_channels=16)  # 16 channels, 4x4: an FP8 patch conv
        return transformers.ViTModel(cfg, add_pooling_layer=False).eval(), {"pixel_values": torch.randn(2, 16, 16, 16)}
    if name == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        cfg = transformers.WhisperConfig(d_model=64, encoder_layers=1, encoder_attention_heads=4, encoder_ffn_dim=128,
                                         decoder_layers=1, decoder_attention_heads=4, num_mel_bins=16,
                                         max_source_positions=16)
        return WhisperEncoder(cfg).eval(), {"input_features": torch.randn(2, 16, 32)}
    raise ValueError(name)
