"""Next-token loss by position: the in-context-learning view of a model.

``per_token_loss`` entry i is the loss of predicting the token at position i + 1, so tables index
losses by the predicted token's position ``pos`` (1..seq_len-1). On ``[BOS] + r + r`` the first
half is pos 1..half_len and the repeated half pos half_len+1..2*half_len: a model with induction
heads predicts the repeated half far better.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def token_batches(
    tokens: Int[np.ndarray, "seq pos"],
    batch_size: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "batches",
) -> Iterator[Int[torch.Tensor, "batch pos"]]:
    """Consecutive batches of a (memory-mapped) token array as long tensors on ``device``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, len(tokens), batch_size)
    for start in tqdm(starts, desc=desc, disable=None if progress else True, mininterval=2):
        batch = np.array(tokens[start : start + batch_size], dtype=np.int64)  # a writable copy
        yield torch.from_numpy(batch).to(device)


def per_token_loss(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "batch pos-1"]:
    return model(tokens, return_type="loss", loss_per_token=True)


class PositionLossAccumulator:
    """Streams per-token losses; ``mean()`` averages each position over all sequences seen."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.n_sequences = 0

    def update(self, loss: Float[torch.Tensor, "batch pos-1"]) -> None:
        batch_total = loss.detach().sum(0, dtype=torch.float64).cpu()
        if self.total is not None and self.total.shape != batch_total.shape:
            raise ValueError(
                f"loss has {batch_total.shape[0]} positions, expected {self.total.shape[0]}"
            )
        self.total = batch_total if self.total is None else self.total + batch_total
        self.n_sequences += loss.shape[0]

    def mean(self) -> Float[torch.Tensor, " pos-1"]:
        if self.total is None:
            raise ValueError("no losses were seen")
        return self.total / self.n_sequences


@torch.inference_mode()
def loss_by_position(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "seq pos"],
    batch_size: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Float[torch.Tensor, " pos-1"]:
    """Mean next-token loss at each predicted position (entry i is position i + 1), float64."""
    acc = PositionLossAccumulator()
    for batch in token_batches(tokens, batch_size, device, progress, desc="loss"):
        acc.update(per_token_loss(model, batch))
    return acc.mean()


def half_losses(
    loss: Float[torch.Tensor, " pos-1"], half_len: int
) -> dict[str, Float[torch.Tensor, ""]]:
    """Mean loss over the first half (pos 1..half_len) and the repeated half of ``[BOS] + r + r``."""
    if loss.shape[-1] != 2 * half_len:
        raise ValueError(
            f"expected {2 * half_len} predicted positions for half_len={half_len}, got {loss.shape[-1]}"
        )
    return {"first": loss[..., :half_len].mean(-1), "second": loss[..., half_len:].mean(-1)}


def resolve_position(pos: int, seq_len: int) -> int:
    """A predicted-token position (1..seq_len-1); negative values count from the end (-1 = last)."""
    resolved = pos + seq_len if pos < 0 else pos
    if not 1 <= resolved <= seq_len - 1:
        raise ValueError(f"position {pos} is outside the predicted positions 1..{seq_len - 1}")
    return resolved


def icl_score(loss: Float[torch.Tensor, " pos-1"], early: int, late: int) -> float:
    """Olsson et al.'s in-context-learning score: loss at a late position minus at an early one.

    Negative when later tokens are predicted better thanks to the context. Positions are
    predicted-token positions (see ``resolve_position``).
    """
    seq_len = loss.shape[-1] + 1
    early, late = resolve_position(early, seq_len), resolve_position(late, seq_len)
    if late <= early:
        raise ValueError(f"ICL late position {late} must come after the early position {early}")
    return float(loss[late - 1] - loss[early - 1])
