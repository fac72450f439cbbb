"""Data on which small attention-only models learn induction, and the repeated-sequence probe.

Training data: uniform random tokens with spans of random length copied to random later offsets.
A fixed repeat period lets a model solve the task by positional look-back and no induction head
forms (measured: scores ~0.02); random lengths and offsets force the content-based
[A][B] ... [A] -> [B] mechanism. Token 0 is BOS and never appears elsewhere.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Int

BOS = 0


def repeated_spans(
    *,
    n_sequences: int,
    seq_len: int,
    d_vocab: int,
    span_len: tuple[int, int],
    spans_per_seq: int,
    seed: int,
) -> Int[np.ndarray, "seq pos"]:
    """Random sequences (BOS first) in which ``spans_per_seq`` spans reappear later."""
    lo, hi = span_len
    if not 1 <= lo <= hi:
        raise ValueError(f"span_len must satisfy 1 <= min <= max, got {span_len}")
    if 2 * hi + 1 > seq_len:
        raise ValueError(
            f"span_len max {hi} too long for seq_len {seq_len} (need 2*max+1 <= seq_len)"
        )
    if d_vocab < 3:
        raise ValueError("d_vocab must be >= 3 (BOS plus at least two tokens)")
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, d_vocab, size=(n_sequences, seq_len), dtype=np.int32)  # seq pos
    tokens[:, 0] = BOS
    for row in tokens:
        for _ in range(spans_per_seq):
            length = int(rng.integers(lo, hi + 1))
            src = int(rng.integers(1, seq_len - 2 * length + 1))
            dst = int(rng.integers(src + length, seq_len - length + 1))
            row[dst : dst + length] = row[src : src + length]
    return tokens


def repeated_random(
    *, n_sequences: int, half_len: int, d_vocab: int, seed: int
) -> Int[np.ndarray, "seq pos"]:
    """``[BOS] + r + r`` with ``r`` uniform random tokens: the induction-head probe."""
    if half_len < 2 or d_vocab < 3:
        raise ValueError("half_len must be >= 2 and d_vocab >= 3")
    rng = np.random.default_rng(seed)
    half = rng.integers(1, d_vocab, size=(n_sequences, half_len), dtype=np.int32)
    bos = np.full((n_sequences, 1), BOS, dtype=np.int32)
    return np.concatenate([bos, half, half], axis=1)  # seq (1 + 2*half_len)
