"""Tiny attention modules, one per way attention is spelt in the wild."""
import math

import torch
import torch.nn.functional as F
from torch import nn

DIM, HEADS, SEQ = 64, 4, 8  # head size 16: inside TensorRT's FP8 attention window


class TinyAttention(nn.Module):
    """LayerNorm -> Q/K/V -> attention -> O-proj -> residual -> MLP, with `spelling` choosing the attention."""

    def __init__(self, spelling: str = "mul_after", heads: int = HEADS, dim: int = DIM):
        super().__init__()
        self.spelling, self.heads, self.hs = spelling, heads, dim // heads
        self.norm = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(0.1)

    def _split(self, t):  # (B, T, C) -> (B, nh, T, hs)
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.hs).transpose(1, 2)

    def attend(self, q, k, v, mask):
        s, sc = self.spelling, 1.0 / math.sqrt(self.hs)
        if s == "sdpa":
            return F.scaled_dot_product_attention(q, k, v)
        if s == "sdpa_float_mask":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if s == "sdpa_bool_mask":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask > -1)
        if s == "sdpa_causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if s == "mul_after":
            w = torch.matmul(q, k.transpose(-1, -2)) * sc
        elif s == "div_after":
            w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.hs)
        elif s == "div_by_tensor":  # GPT-2 style
            w = torch.matmul(q, k.transpose(-1, -2)) / torch.full([], math.sqrt(self.hs), dtype=q.dtype)
        elif s == "mul_before":
            w = torch.matmul(q * sc, k.transpose(-1, -2))
        elif s == "k_permuted":
            w = torch.matmul(q, k.permute(0, 1, 3, 2)) * sc
        elif s == "no_scale":  # T5 style
            w = torch.matmul(q, k.transpose(-1, -2))
        elif s == "additive_mask":
            w = torch.matmul(q, k.transpose(-1, -2)) * sc + mask
        elif s == "bool_mask":
            w = (torch.matmul(q, k.transpose(-1, -2)) * sc).masked_fill(mask < -1, float("-inf"))
        elif s == "fp32_softmax":  # HF eager: softmax in float32, cast back, dropout
            w = torch.matmul(q, k.transpose(2, 3)) * sc + mask
            p = self.dropout(F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype))
            return torch.matmul(p, v)
        else:
            raise ValueError(s)
        return torch.matmul(self.dropout(torch.softmax(w, dim=-1)), v)

    def forward(self, x, mask=None):
        h = self.norm(x)
        q, k, v = self._split(self.q(h)), self._split(self.k(h)), self._split(self.v(h))
        a = self.attend(q, k, v, mask).transpose(1, 2).reshape(x.shape)
        x = x + self.o(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


SPELLINGS = ["mul_after", "div_after", "div_by_tensor", "mul_before", "k_permuted", "no_scale", "additive_mask",
             "bool_mask", "fp32_softmax", "sdpa", "sdpa_float_mask", "sdpa_bool_mask", "sdpa_causal"]
NEEDS_MASK = {"additive_mask", "bool_mask", "fp32_softmax", "sdpa_float_mask", "sdpa_bool_mask"}
SCALE_AFTER_BMM1 = {"mul_after", "div_after", "div_by_tensor", "k_permuted", "additive_mask", "bool_mask",
                    "fp32_softmax"}


def inputs_for(spelling: str, batch: int = 2):
    x = torch.randn(batch, SEQ, DIM)
    if spelling not in NEEDS_MASK:
        return (x,)
    mask = torch.zeros(batch, 1, SEQ, SEQ)
    mask[..., -2:] = -1e4  # padding on the last two keys
    return (x, mask)
