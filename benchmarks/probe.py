"""Linear probe: multinomial logistic regression fitted full-batch with L-BFGS, torch only.

Used to turn frozen (FP32 or FP8-quantised) features into an accuracy number without
needing scikit-learn.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LinearProbe:
    mean: torch.Tensor    # feature standardisation, fitted on the training set
    std: torch.Tensor
    weight: torch.Tensor  # [n_classes, dim]
    bias: torch.Tensor    # [n_classes]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.double() - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(-1)


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, seed: int = 0,
                     l2: float = 1e-2, max_iter: int = 300) -> LinearProbe:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 on standardised features.

    The objective is strictly convex, so the result hardly depends on the seed (it only
    sets the small random init); float64 keeps L-BFGS from stalling early.
    """
    x = features.detach().double()
    y = labels.long()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / std
    n_classes = int(y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(n_classes, x.shape[1], generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(mean, std, w.detach(), b.detach())


def accuracy(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> float:
    return (probe.predict(features) == labels.long()).double().mean().item()
