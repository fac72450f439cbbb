"""Token datasets on disk: one ``(seq, pos)`` int32 ``.npy`` array, read memory-mapped."""

from __future__ import annotations

import os

import numpy as np
from jaxtyping import Int

from mechflow.artifacts import atomic_path


def save_tokens(tokens: Int[np.ndarray, "seq pos"], path: str | os.PathLike) -> None:
    if tokens.ndim != 2:
        raise ValueError(f"token dataset must be 2-D (seq, pos), got shape {tokens.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, tokens.astype(np.int32), allow_pickle=False)


def load_tokens(path: str | os.PathLike) -> Int[np.ndarray, "seq pos"]:
    """Memory-mapped, so caching a large dataset never holds it all in RAM."""
    tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"{path}: expected a 2-D integer token array, got {tokens.dtype} {tokens.shape}"
        )
    return tokens


def select_sequences(
    tokens: Int[np.ndarray, "seq pos"], n_sequences: int, seed: int
) -> Int[np.ndarray, "seq pos"]:
    """``n_sequences`` rows drawn without replacement, in their original order: a sample spread
    over the whole dataset (the first rows of a text dataset are its first files only)."""
    if not 1 <= n_sequences <= len(tokens):
        raise ValueError(f"cannot draw {n_sequences} sequences from {len(tokens)}")
    rows = np.sort(np.random.default_rng(seed).choice(len(tokens), n_sequences, replace=False))
    return np.asarray(tokens[rows])


def spread_indices(n_rows: int, n: int) -> np.ndarray:
    """``n`` row indices evenly spaced over ``n_rows`` (all of them if there are no more): a
    held-out sample that reads every part of a corpus, whose first rows are its first files."""
    if n >= n_rows:
        return np.arange(n_rows)
    return np.linspace(0, n_rows - 1, n).round().astype(np.int64)


def spread_rows(tokens: Int[np.ndarray, "seq pos"], n: int) -> Int[np.ndarray, "seq pos"]:
    """The rows of :func:`spread_indices`."""
    return np.asarray(tokens[spread_indices(len(tokens), n)])
