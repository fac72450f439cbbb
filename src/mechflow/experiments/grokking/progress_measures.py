"""Progress measures for grokking (Nanda et al. 2023), computed from saved checkpoints.

Restricted loss keeps only the key-frequency directions cos(w(a+b)), sin(w(a+b)) of the logits
(plus each output's mean) and is evaluated on every pair: it falls once the Fourier circuit
works, before the test loss does. Excluded loss removes those directions and is evaluated on the
training pairs: it rises while the circuit forms, because memorisation alone no longer fits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def sum_directions(p: int, keys: list[int]) -> Float[np.ndarray, "pair direction"]:
    """Orthonormal columns cos(w_k(a+b)), sin(w_k(a+b)) over the p² pairs (row a*p + b)."""
    a, b = np.divmod(np.arange(p * p), p)
    cols = []
    for k in keys:
        angle = 2 * np.pi * k * (a + b) / p
        cols += [np.cos(angle), np.sin(angle)]
    if not cols:
        return np.zeros((p * p, 0))
    directions = np.stack(cols, axis=1)  # pair direction
    return directions / np.linalg.norm(directions, axis=0, keepdims=True)


def split_logits(
    logits: Float[torch.Tensor, "pair c"], keys: list[int]
) -> tuple[Float[torch.Tensor, "pair c"], Float[torch.Tensor, "pair c"]]:
    """(restricted, excluded) logits: the key-frequency part (+ mean) and everything else."""
    p = int(round(logits.shape[0] ** 0.5))
    u = torch.as_tensor(sum_directions(p, keys), dtype=logits.dtype, device=logits.device)
    projected = u @ (u.T @ logits)  # pair c
    restricted = projected + logits.mean(dim=0, keepdim=True)
    return restricted, logits - projected


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return F.cross_entropy(logits.double(), labels).item()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


def weight_norm(model: HookedTransformer) -> float:
    """L2 norm of all parameters: weight decay shrinks it during cleanup."""
    return float(torch.sqrt(sum((w.detach().double() ** 2).sum() for w in model.parameters())))


@torch.no_grad()
def measure_checkpoint(
    model: HookedTransformer,
    inputs: Int[torch.Tensor, "pair pos"],
    labels: Int[torch.Tensor, " pair"],
    train_rows: Int[torch.Tensor, " train"],
    test_rows: Int[torch.Tensor, " test"],
    keys: list[int],
) -> dict[str, float]:
    """Every progress measure of one checkpoint, from one forward pass over all p² pairs."""
    logits = model(inputs, return_type="logits")[:, -1, :].double()  # pair c
    restricted, excluded = split_logits(logits, keys)
    return {
        "train_loss": cross_entropy(logits[train_rows], labels[train_rows]),
        "test_loss": cross_entropy(logits[test_rows], labels[test_rows]),
        "train_accuracy": accuracy(logits[train_rows], labels[train_rows]),
        "test_accuracy": accuracy(logits[test_rows], labels[test_rows]),
        "restricted_loss": cross_entropy(restricted, labels),
        "excluded_loss": cross_entropy(excluded[train_rows], labels[train_rows]),
        "weight_norm": weight_norm(model),
    }
