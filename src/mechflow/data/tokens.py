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
