"""Metrics over training checkpoints: the induction-head phase change (Olsson et al. 2022).

At the phase change the induction score of later-layer heads jumps, the loss on the repeated half
of ``[BOS] + r + r`` drops, and the in-context-learning score (late minus early token loss on
training-distribution text) turns sharply negative, all at the same step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Int

from mechflow.analysis.attention_scores import HeadScoreAccumulator
from mechflow.analysis.losses import (
    PositionLossAccumulator,
    half_losses,
    icl_score,
    loss_by_position,
    token_batches,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

METRICS = (
    "induction_score",
    "previous_token_score",
    "repeated_half_loss",
    "first_half_loss",
    "icl_score",
)


@torch.inference_mode()
def induction_metrics(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "seq pos"],
    half_len: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Head scores and half losses on ``[BOS] + r + r`` from one pass over the sequences.

    ``induction_score`` is the best head in layers >= 1 (induction needs a previous-token head
    before it; a one-layer model uses layer 0), ``previous_token_score`` the best layer-0 head.
    """
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    scores = [HeadScoreAccumulator(half_len) for _ in names]
    losses = PositionLossAccumulator()
    for batch in token_batches(tokens, batch_size, device):
        loss, cache = model.run_with_cache(
            batch, names_filter=names, return_type="loss", loss_per_token=True
        )
        losses.update(loss)
        for acc, name in zip(scores, names, strict=True):
            acc.update(cache[name])
    results = [acc.result() for acc in scores]
    later = results[1:] if n_layers > 1 else results
    halves = half_losses(losses.mean(), half_len)
    return {
        "induction_score": max(float(r["induction"].max()) for r in later),
        "previous_token_score": float(results[0]["previous_token"].max()),
        "repeated_half_loss": float(halves["second"]),
        "first_half_loss": float(halves["first"]),
    }


def checkpoint_metrics(
    model: HookedTransformer,
    eval_tokens: Int[np.ndarray, "seq pos"],
    icl_tokens: Int[np.ndarray, "seq pos"],
    *,
    half_len: int,
    batch_size: int,
    icl_early: int,
    icl_late: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Every metric in ``METRICS`` for one model."""
    metrics = induction_metrics(model, eval_tokens, half_len, batch_size, device)
    icl_loss = loss_by_position(model, icl_tokens, batch_size, device, progress=False)
    metrics["icl_score"] = icl_score(icl_loss, icl_early, icl_late)
    return metrics
