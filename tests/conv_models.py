"""Tiny random-weight convolutional and hybrid models (no hub, no timm/torchvision) for tests/test_conv.py."""
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


def _unet():
    import diffusers

    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2,  # diffusers: 2 heads (sizes 16 and 32)
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))

    class UNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states).sample

    return UNet(), (torch.randn(2, 4, 8, 8), torch.tensor([10, 20]), torch.randn(2, 6, 32))


def family(name: str):
    """(model in eval mode, example inputs) for one family."""
    torch.manual_seed(0)
    pixels = {"pixel_values": torch.randn(2, 3, 32, 32)}
    if name == "convnext":
        cfg = transformers.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], patch_size=4, num_stages=2)
        return transformers.ConvNextModel(cfg).eval(), pixels
    if name == "resnet":
        cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="bottleneck")
        return transformers.ResNetModel(cfg).eval(), pixels
    if name == "mobilevit":
        cfg = transformers.MobileViTConfig(image_size=32, patch_size=2, hidden_sizes=[32, 32, 32], num_attention_heads=2,
                                           neck_hidden_sizes=[16, 16, 32, 32, 32, 32, 64], expand_ratio=2.0)
        return transformers.MobileViTModel(cfg).eval(), pixels
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
    if name == "unet":
        model, example = _unet()
        return model.eval(), example
    raise ValueError(name)
