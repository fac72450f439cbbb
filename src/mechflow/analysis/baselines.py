"""Loss baselines a language model's curve is read against: uniform, unigram and bigram.

A validation loss means little alone: ``ln V`` is what knowing nothing costs, the unigram
cross-entropy what token frequencies alone buy, and the bigram what the previous token buys.
Each is fitted on the training split and scored on the validation split, in nats per predicted
token (the positions a next-token loss scores: every token but each sequence's first).

Smoothing: add-``alpha`` (Lidstone) for the unigram; the bigram interpolates its add-``alpha``
conditional with the unigram, ``lam * p(b | a) + (1 - lam) * p(b)``, so an unseen pair never
costs infinity and a rare context leans on the unigram.

The bigram counts are sparse (the pairs seen, at most one per training token): a dense
``d_vocab²`` table is 20 GB of int64 for GPT-2's 50257 tokens.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from jaxtyping import Int

BASELINES = ("uniform", "unigram", "bigram")


def _pairs(tokens: Int[np.ndarray, "seq pos"]) -> tuple[np.ndarray, np.ndarray]:
    """(previous, next) token of every predicted position."""
    tokens = np.asarray(tokens)
    return tokens[:, :-1].ravel(), tokens[:, 1:].ravel()


def unigram_probs(tokens: Int[np.ndarray, "seq pos"], d_vocab: int, alpha: float) -> np.ndarray:
    counts = np.bincount(_pairs(tokens)[1], minlength=d_vocab).astype(np.float64)
    return (counts + alpha) / (counts.sum() + alpha * d_vocab)


def pair_codes(
    prev: Int[np.ndarray, " pair"], nxt: Int[np.ndarray, " pair"], d_vocab: int
) -> Int[np.ndarray, " pair"]:
    """One int64 per (previous, next) pair: ``prev * d_vocab + next`` (< 2**63 for any vocab)."""
    return prev.astype(np.int64) * d_vocab + nxt.astype(np.int64)


def bigram_counts(
    tokens: Int[np.ndarray, "seq pos"], d_vocab: int
) -> tuple[Int[np.ndarray, " seen"], Int[np.ndarray, " seen"]]:
    """(sorted codes of the pairs seen, their counts): the nonzero entries of the d_vocab²
    table, in row-major order (see ``pair_codes``)."""
    return np.unique(pair_codes(*_pairs(tokens), d_vocab), return_counts=True)


def pair_counts_of(
    codes: Int[np.ndarray, " seen"], counts: Int[np.ndarray, " seen"], query: np.ndarray
) -> Int[np.ndarray, " query"]:
    """The count of each queried pair code (0 for a pair never seen; ``codes``: sorted, not
    empty)."""
    at = np.searchsorted(codes, query).clip(max=len(codes) - 1)
    return np.where(codes[at] == query, counts[at], 0)


def baseline_losses(
    train: Int[np.ndarray, "seq pos"],
    validation: Int[np.ndarray, "seq pos"],
    d_vocab: int,
    alpha: float = 0.1,
    lam: float = 0.9,
) -> pd.DataFrame:
    """Validation cross-entropy (nats/token) of each baseline fitted on ``train``.

    Tidy: one row per baseline (``baseline``, ``loss``, ``smoothing``). Memory grows with the
    tokens, not with ``d_vocab²``.
    """
    if not 0 < lam < 1 or alpha <= 0:
        raise ValueError(f"need alpha > 0 and 0 < lam < 1, got alpha={alpha}, lam={lam}")
    for name, data in (("train", train), ("validation", validation)):
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] < 2 or data.size == 0:
            raise ValueError(f"{name} tokens must be (seq, pos>=2), got shape {data.shape}")
        if int(data.min()) < 0 or int(data.max()) >= d_vocab:
            raise ValueError(f"{name} token ids must lie in [0, {d_vocab})")
    unigram = unigram_probs(train, d_vocab, alpha)
    codes, counts = bigram_counts(train, d_vocab)
    row_totals = np.bincount(_pairs(train)[0], minlength=d_vocab)  # pairs from each token
    prev, nxt = _pairs(validation)
    seen = pair_counts_of(codes, counts, pair_codes(prev, nxt, d_vocab))
    conditional = (seen + alpha) / (row_totals[prev] + alpha * d_vocab)
    bigram = lam * conditional + (1 - lam) * unigram[nxt]
    rows = [
        {"baseline": "uniform", "loss": float(np.log(d_vocab)), "smoothing": "none"},
        {
            "baseline": "unigram",
            "loss": float(-np.log(unigram[nxt]).mean()),
            "smoothing": f"add-{alpha:g}",
        },
        {
            "baseline": "bigram",
            "loss": float(-np.log(bigram).mean()),
            "smoothing": f"add-{alpha:g}, interpolated with the unigram (lambda {lam:g})",
        },
    ]
    return pd.DataFrame(rows, columns=["baseline", "loss", "smoothing"])
