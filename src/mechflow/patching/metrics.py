"""What a patch is scored by: a function of the logits, reduced over the prompts to a scalar
(TransformerLens's ``patching_metric`` convention), and, for speed, the same value read from
the final residual stream at the few positions and tokens it needs.

A logit difference over ``n`` prompts needs ``n`` rows of the residual stream and two columns
of the unembedding, not ``n x pos x d_vocab`` logits: on GPT-2 small the unembedding is ~1/3 of
a 15-token forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class LogitDifference:
    """Mean over prompts of ``logit[correct] - logit[wrong]`` at each prompt's ``positions``
    (e.g. IOI's END token: " Mary" against " John").

    Args:
        positions: the position each prompt's answer is read at (right-padded prompts: the last
            real token).
        correct, wrong: token ids, one each per prompt.
        reduce: ``"mean"`` (a scalar, as TransformerLens's metrics are) or ``"none"`` (one
            value per prompt).
    """

    positions: Int[Tensor, " prompt"]
    correct: Int[Tensor, " prompt"]
    wrong: Int[Tensor, " prompt"]
    reduce: str = "mean"

    def __post_init__(self):
        n = {len(self.positions), len(self.correct), len(self.wrong)}
        if len(n) != 1:
            raise ValueError(
                f"positions, correct and wrong need one entry per prompt, got lengths "
                f"{len(self.positions)}, {len(self.correct)}, {len(self.wrong)}"
            )
        if self.reduce not in ("mean", "none"):
            raise ValueError(f"reduce must be 'mean' or 'none', got {self.reduce!r}")

    def _reduce(self, diff: Float[Tensor, " prompt"]) -> Tensor:
        return diff.mean() if self.reduce == "mean" else diff

    def __call__(self, logits: Float[Tensor, "prompt pos d_vocab"]) -> Tensor:
        rows = torch.arange(len(logits), device=logits.device)
        at = logits[rows, self.positions.to(logits.device)]  # prompt d_vocab
        diff = at.gather(1, self._ids(logits.device)).squeeze(-1)  # prompt 2
        return self._reduce(diff[:, 0] - diff[:, 1])

    def _ids(self, device) -> Tensor:
        return torch.stack([self.correct, self.wrong], dim=1).to(device)

    def from_resid(
        self, model: HookedTransformer, resid: Float[Tensor, "prompt pos d_model"]
    ) -> Tensor:
        """The same value from the residual stream after the last block: the final norm at the
        answer positions only, then the two unembedding columns."""
        return self._reduce(self._diffs(model, resid, 1)[0])

    def per_tile(
        self, model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"], n_tiles: int
    ) -> Float[Tensor, " tile"]:
        """:meth:`from_resid` of each of ``n_tiles`` copies of the prompts stacked in
        ``resid`` (tile-major), at once. Needs ``reduce="mean"``."""
        if self.reduce != "mean":
            raise ValueError("per_tile scores tiles by their mean: reduce must be 'mean'")
        return self._diffs(model, resid, n_tiles).mean(dim=1)

    def _diffs(self, model, resid: Tensor, n_tiles: int) -> Float[Tensor, "tile prompt"]:
        device = resid.device
        rows = torch.arange(len(resid), device=device)
        x = resid[rows, self.positions.to(device).repeat(n_tiles)]  # batch d_model
        if hasattr(model, "ln_final"):  # models without normalisation have none
            x = model.ln_final(x[:, None])[:, 0]
        ids = self._ids(device)  # prompt 2
        direction = model.W_U[:, ids[:, 0]] - model.W_U[:, ids[:, 1]]  # d_model prompt
        bias = model.b_U[ids[:, 0]] - model.b_U[ids[:, 1]]  # prompt
        x = x.view(n_tiles, -1, x.shape[-1])  # tile prompt d_model
        return torch.einsum("tpd,dp->tp", x, direction) + bias


def normalised(value: Tensor, clean: float | Tensor, corrupted: float | Tensor) -> Tensor:
    """``value`` on the scale where the clean run scores 1 and the corrupted run 0."""
    return (value - corrupted) / (clean - corrupted)
