"""Attention-pattern head scores on ``[BOS] + r + r`` (Elhage et al. 2021; Olsson et al. 2022).

Each score is the mean attention a head puts on one diagonal of its pattern, over a range of query
positions. Scores are kept as per-head sums and counts, so patterns can be streamed batch by batch
from an activation store and the result equals the score on the whole set.

Positions on ``[BOS] + r + r`` (half_len = len(r)): the first half is 1..half_len, the repeated
half half_len+1..2*half_len. A query q in the repeated half sees its token's earlier occurrence at
q - half_len (duplicate-token offset -half_len) and the token after it at q - half_len + 1
(induction offset -(half_len - 1)). The previous-token score uses offset -1 over every query >= 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float

SCORES = ("previous_token", "duplicate_token", "induction")


@dataclass(frozen=True)
class Diagonal:
    """Attention from query q to key q + offset, for queries q >= first_query."""

    offset: int
    first_query: int


def score_diagonals(half_len: int) -> dict[str, Diagonal]:
    if half_len < 2:
        raise ValueError(f"half_len must be >= 2, got {half_len}")
    return {
        "previous_token": Diagonal(offset=-1, first_query=1),
        "duplicate_token": Diagonal(offset=-half_len, first_query=half_len + 1),
        "induction": Diagonal(offset=-(half_len - 1), first_query=half_len + 1),
    }


def diagonal_sum(
    pattern: Float[torch.Tensor, "batch head_index query_pos key_pos"], diagonal: Diagonal
) -> tuple[Float[torch.Tensor, " head_index"], int]:
    """Per-head sum of the attention on one diagonal (float64), and how many entries were summed."""
    diag = pattern.diagonal(offset=diagonal.offset, dim1=-2, dim2=-1)  # batch head_index n_diag
    query = torch.arange(diag.shape[-1], device=diag.device) - diagonal.offset
    diag = diag[..., query >= diagonal.first_query]
    total = diag.sum(dim=(0, 2), dtype=torch.float64)  # head_index
    return total, diag.shape[0] * diag.shape[2]


class HeadScoreAccumulator:
    """Streams patterns of one layer; ``result()`` is the mean over everything seen."""

    def __init__(self, half_len: int):
        self.half_len = half_len
        self.diagonals = score_diagonals(half_len)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts = dict.fromkeys(self.diagonals, 0)

    def update(
        self,
        pattern: Float[torch.Tensor, "batch head_index query_pos key_pos"] | np.ndarray,
    ) -> None:
        pattern = torch.as_tensor(pattern)
        seq_len = 1 + 2 * self.half_len
        if pattern.ndim != 4 or pattern.shape[-2:] != (seq_len, seq_len):
            raise ValueError(
                f"expected attention patterns (batch, head_index, {seq_len}, {seq_len}) for "
                f"[BOS] + r + r with half_len={self.half_len}, got {tuple(pattern.shape)}"
            )
        for name, diagonal in self.diagonals.items():
            total, count = diagonal_sum(pattern, diagonal)
            self.sums[name] = self.sums[name] + total.cpu() if name in self.sums else total.cpu()
            self.counts[name] += count

    def result(self) -> dict[str, Float[torch.Tensor, " head_index"]]:
        if not self.sums:
            raise ValueError("no attention patterns were seen")
        return {name: self.sums[name] / self.counts[name] for name in self.diagonals}


def head_scores(
    pattern: Float[torch.Tensor, "batch head_index query_pos key_pos"], half_len: int
) -> dict[str, Float[torch.Tensor, " head_index"]]:
    """All scores of one layer's patterns in one call (float64, each in [0, 1])."""
    acc = HeadScoreAccumulator(half_len)
    acc.update(pattern)
    return acc.result()
