"""Every probe of a sweep as one packed weight tensor, trained by one fused AdamW.

Each step computes every probe's logits with one ``baddbmm`` over hooks (a hook's probes are
the column blocks of one matrix), the gradient of each probe's own mean cross-entropy in
closed form (softmax minus one-hot: no autograd graph over the ``hooks x rows x classes x
targets`` logits, whose elementwise passes cost as much as the matrix products on a CPU), and
one fused AdamW step. The loss is a sum of independent per-probe losses and Adam is
per-parameter, so every probe trains exactly as it would alone on the same batches.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float

from mechflow.probes.config import ProbeConfig
from mechflow.probes.linear import class_argmax, packed_logits


class BatchedProbes:
    """The weights of every probe, packed: ``w (hook, d_model, classes * targets)``."""

    def __init__(
        self, n_hooks: int, d_model: int, train_counts: np.ndarray, cfg: ProbeConfig, device
    ):
        T, C = train_counts.shape
        self.n_classes, self.ignore = C, cfg.ignore_index
        # bias: log class frequencies (smoothed), so epoch 0 is the prior-only model
        prior = np.log((train_counts + 1.0) / (train_counts.sum(1, keepdims=True) + C)).T
        b = torch.from_numpy(prior.astype(np.float32)).reshape(1, 1, C * T)
        self.w = torch.nn.Parameter(torch.zeros(n_hooks, d_model, C * T, device=device))
        self.b = torch.nn.Parameter(b.repeat(n_hooks, 1, 1).to(device))
        fused = device.type in ("cpu", "cuda")  # one kernel for every parameter's update
        self.opt = torch.optim.AdamW(
            [
                {"params": [self.w], "weight_decay": cfg.weight_decay},
                {"params": [self.b], "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            fused=fused or None,
        )
        self.best_w, self.best_b = self.w.detach().clone(), self.b.detach().clone()

    def logits(self, x: Float[torch.Tensor, "hook row d_model"]) -> torch.Tensor:
        return packed_logits(x, self.w.detach(), self.b.detach(), self.n_classes)

    def step(self, x: Float[torch.Tensor, "hook row d_model"], y: torch.Tensor) -> None:
        """One AdamW step on the sum over probes of each probe's mean cross-entropy."""
        H, B, _ = x.shape
        valid = y != self.ignore  # row target
        weight = valid / valid.sum(0).clamp_min(1)  # each probe's mean over its labelled rows
        grad = self.logits(x).softmax(2)  # hook row class target
        grad.mul_(weight[None, :, None, :])
        index = y.clamp_min(0).long()[None, :, None, :].expand(H, B, 1, -1)
        grad.scatter_add_(2, index, (-weight)[None, :, None, :].expand(H, B, 1, -1))
        grad = grad.view(H, B, -1)
        self.w.grad = torch.bmm(x.transpose(1, 2), grad)
        self.b.grad = grad.sum(1, keepdim=True)
        self.opt.step()

    def evaluate(self, x: Float[torch.Tensor, "hook row d_model"], y: torch.Tensor):
        """Summed cross-entropy and correct predictions ``(hook, target)`` of these rows."""
        logits = self.logits(x)
        valid = y != self.ignore
        index = y.clamp_min(0).long()[None, :, None, :].expand(x.shape[0], -1, 1, -1)
        nll = -logits.log_softmax(2).gather(2, index).squeeze(2)  # hook row target
        loss = torch.where(valid, nll, 0.0).sum(1)
        correct = ((class_argmax(logits) == y) & valid).sum(1)
        return loss, correct

    def keep_best(self, better: torch.Tensor) -> None:
        mask = better.repeat(1, self.n_classes)[:, None, :]  # hook 1 (class target)
        self.best_w.copy_(torch.where(mask, self.w.detach(), self.best_w))
        self.best_b.copy_(torch.where(mask, self.b.detach(), self.best_b))

    def restore_best(self) -> None:
        with torch.no_grad():
            self.w.copy_(self.best_w)
            self.b.copy_(self.best_b)
