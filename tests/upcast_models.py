"""A tiny BF16 diffusion-transformer block with the deliberate fp32/fp64 islands real DiTs have.

diffusers computes the sinusoidal timestep embedding of `t * 1000` in fp32 (in bf16 the step at 1000
is 4, so sin/cos of the high frequencies are garbage) and the RoPE table in fp64 (Flux), then casts
back to the model's dtype; attention reads q and k rotated in fp32 (`x.float()` upcasts).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

DIM, HEADS, SEQ, FREQS = 64, 2, 16, 32


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = (t.float() * 1000)[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_table(n: int, dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(n, dtype=torch.float64, device=device)
    theta = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))
    ang = pos[:, None] * theta[None, :]  # (T, hd/2) in fp64
    return ang.cos().float(), ang.sin().float()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x = x.float()  # the upcast around the rotary embedding
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


class TinyDiT(nn.Module):
    """x (B, SEQ, DIM) and t (B,) in [0, 1] -> (B, SEQ, DIM): one block and a final layer, adaLN from t."""

    def __init__(self, dim: int = DIM, heads: int = HEADS):
        super().__init__()
        self.heads, self.hs = heads, dim // heads
        self.t_mlp = nn.Sequential(nn.Linear(FREQS * 2, dim), nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        with torch.no_grad():  # conditioning as strong as a trained DiT's, so the timestep embedding matters
            self.t_mlp[2].weight.mul_(4)

    def _split(self, t):  # (B, T, C) -> (B, nh, T, hs)
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.hs).transpose(1, 2)

    def forward(self, x, t):
        shift, scale = self.t_mlp(timestep_embedding(t, FREQS * 2).to(x.dtype)).chunk(2, dim=-1)
        h = self.norm(x) * (1 + scale[:, None]) + shift[:, None]
        cos, sin = rope_table(x.shape[1], self.hs, x.device)
        q = rotate(self._split(self.q(h)), cos, sin).to(x.dtype)
        k = rotate(self._split(self.k(h)), cos, sin).to(x.dtype)
        v = self._split(self.v(h))
        w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.hs)
        a = torch.matmul(torch.softmax(w, dim=-1), v).transpose(1, 2).reshape(x.shape)
        x = x + self.o(a)
        h = self.norm(x) * (1 + scale[:, None]) + shift[:, None]  # a DiT's modulated final layer
        return self.fc2(F.gelu(self.fc1(h)))


def dit_inputs(batch: int = 2, seed: int = 0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, SEQ, DIM, generator=g).to(dtype), torch.rand(batch, generator=g).to(dtype)
