"""Does the model play legal moves? Its next-move distribution against the rules.

Li et al. 2023 report the top-1 prediction's legality (their 8x8 model: ~99.99%); a model that
learned the rules also spreads its probability over the legal moves, so the cross-entropy and KL
to the uniform distribution over them (the synthetic games' true next-move distribution) are
reported beside it, with the probability mass it leaves on illegal moves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int

from mechflow.data.othello import token_to_square

SUMMARY_COLUMNS = [
    "positions", "games", "top1_legal", "legal_mass", "cross_entropy", "kl_to_uniform_legal",
    "uniform_legal_entropy",
]  # fmt: skip


def square_log_probs(
    model, tokens: Int[np.ndarray, "game pos"], size: int, batch_size: int
) -> torch.Tensor:
    """``(game, pos, square)`` log-probabilities of the next move per board square (-inf on
    the 4 centre squares, which have no token; the BOS/pad token's share is left out, as a
    move it is never legal)."""
    n_sq = size * size
    token_of_square = torch.full((n_sq,), -1, dtype=torch.long)
    squares = torch.from_numpy(token_to_square(np.arange(n_sq - 3), size))
    token_of_square[squares[1:]] = torch.arange(1, n_sq - 3)
    playable = token_of_square >= 0
    out = []
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            batch = torch.tensor(np.asarray(tokens[start : start + batch_size]), dtype=torch.long)
            logp = model(batch, return_type="logits").float().log_softmax(-1)
            per_square = torch.full((*batch.shape, n_sq), -torch.inf)
            per_square[..., playable] = logp[..., token_of_square[playable]]
            out.append(per_square)
    return torch.cat(out)


def legal_move_scores(
    log_probs: torch.Tensor, legal: Int[np.ndarray, "game pos square"]
) -> tuple[dict[str, float], pd.DataFrame]:
    """Scores over every position that has a next move (a legal set), overall and per position."""
    legal_t = torch.from_numpy(np.asarray(legal) == 1)  # -1 (ended) and 0 are not legal
    scored: Bool[torch.Tensor, "game pos"] = legal_t.any(-1)
    n_legal = legal_t.sum(-1).clamp_min(1).float()
    top1 = log_probs.argmax(-1, keepdim=True)
    top1_legal = legal_t.gather(-1, top1)[..., 0].float()
    masked = torch.where(legal_t, log_probs, torch.zeros_like(log_probs))
    cross_entropy = -masked.sum(-1) / n_legal
    uniform_entropy = n_legal.log()
    kl = cross_entropy - uniform_entropy
    legal_mass = torch.where(legal_t, log_probs.exp(), torch.zeros_like(log_probs)).sum(-1)
    per = {
        "top1_legal": top1_legal, "legal_mass": legal_mass, "cross_entropy": cross_entropy,
        "kl_to_uniform_legal": kl, "uniform_legal_entropy": uniform_entropy,
    }  # fmt: skip
    summary = {
        "positions": int(scored.sum()),
        "games": int(scored.any(-1).sum()),
        **{k: float(v[scored].mean()) for k, v in per.items()},
    }
    rows = {"position": np.arange(scored.shape[1]), "positions": scored.sum(0).numpy()}
    for k, v in per.items():
        total = torch.where(scored, v, torch.zeros_like(v)).sum(0)
        rows[k] = (total / scored.sum(0).clamp_min(1)).numpy()
    by_position = pd.DataFrame(rows)
    return summary, by_position[by_position["positions"] > 0].reset_index(drop=True)
