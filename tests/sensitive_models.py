"""Tiny two-block models where chosen attention blocks are made FP8-sensitive on purpose.

A huge constant added to one channel of K shifts every score of a query by the same amount, which
softmax ignores, so the float model computes the same thing; but K's per-tensor FP8 scale is then
set by that channel, and every other K value flushes to zero in FP8: that block's attention goes
uniform unless its q/k/v/probs quantizers are left in float. Nothing else in the model sees it.
"""
import torch

from tiny_models import DIM, SEQ, TinyAttention


class TwoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = TinyAttention(), TinyAttention()

    def forward(self, x):
        return self.b(self.a(x))


def two_blocks(sensitive=("a",), k_offset: float = 1e6):
    torch.manual_seed(0)
    m = TwoBlocks().eval()
    with torch.no_grad():
        for name in sensitive:
            getattr(m, name).k.bias[0] += k_offset
    return m


def data(n_batches: int, batch: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, SEQ, DIM, generator=g) for _ in range(n_batches)]
