"""Hugging Face models from configs with random weights (no hub access)."""
import torch
import transformers


def vit(attn: str = "eager", **overrides):
    cfg = transformers.ViTConfig(num_labels=1000, **overrides)  # ImageNet head: N=1000 passes the K,N >= 16 rule
    return transformers.ViTForImageClassification._from_config(cfg, attn_implementation=attn).eval()


def vit_inputs(batch: int = 1, size: int = 224):
    return {"pixel_values": torch.randn(batch, 3, size, size)}


def small_bert(attn: str = "eager"):
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                  vocab_size=1000, max_position_embeddings=64)
    return transformers.BertModel._from_config(cfg, attn_implementation=attn).eval()


def bert_inputs(batch: int = 2, seq: int = 16):
    ids = torch.randint(5, 1000, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2:] = 0  # padding in the first sentence
    return {"input_ids": ids, "attention_mask": mask}


def save_vit_folder(d, n_images: int):
    """A tiny ViT saved with save_pretrained in d/model, and n_images random 40x48 photos in d/images."""
    import numpy as np
    from PIL import Image

    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                 image_size=32, patch_size=8)
    transformers.ViTModel(cfg).save_pretrained(d / "model")
    (d / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "images" / f"{i}.png")
    return d


def save_bert_folder(d):
    """A tiny BERT (2 layers, max_position_embeddings 64) with MiniLM's tokenizer in d/model, and
    d/sentences.txt with three sentences and an empty line."""
    from fxq.cli.zoo import load_minilm

    _, tokenizer = load_minilm()
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                  vocab_size=tokenizer.vocab_size, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(d / "model")
    tokenizer.save_pretrained(d / "model")
    (d / "sentences.txt").write_text("a short sentence\nanother, slightly longer sentence here\n\nthird one\n")
    return d
