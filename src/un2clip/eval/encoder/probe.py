"""Linear probes: how much of a property a frozen embedding carries, text side aside.

``linear_probe`` is pure tensor math: multinomial logistic regression, full batch, L-BFGS, started from zero.
The shapes world's per-attribute probes (:mod:`un2clip.world.probe`) are built on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 weight_decay: float = 1e-4, max_iter: int = 200) -> float:
    """Accuracy (%) on (test_x, test_y) of a softmax classifier fitted on (train_x, train_y).

    x: (N, D) features (standardised with the training mean/std); y: (N,) integer labels.
    """
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    n_cls = int(max(train_y.max(), test_y.max())) + 1
    layer = torch.nn.Linear(xtr.shape[1], n_cls).double()
    torch.nn.init.zeros_(layer.weight)  # a deterministic start: the answer must not depend on the global RNG
    torch.nn.init.zeros_(layer.bias)
    xtr, xte = xtr.double(), xte.double()
    opt = torch.optim.LBFGS(layer.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(layer(xtr), train_y) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((layer(xte).argmax(1) == test_y).double().mean() * 100)
