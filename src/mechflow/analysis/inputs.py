"""Checks the analysis steps run on their inputs before any heavy work (no TransformerLens).

A bad token file or a model directory without a config fails here with a message naming the
file, instead of deep inside a forward pass minutes later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Int

from mechflow.artifacts import read_json
from mechflow.data.tokens import load_tokens, spread_rows

CONFIG_FILE = "config.json"


def model_name(model_dir: str | os.PathLike) -> str:
    """The name tables use for a model: its directory's name."""
    path = Path(model_dir)
    return path.name or path.resolve().name


def read_model_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The saved ``HookedTransformerConfig`` fields, read without building the model."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"model config not found: {path}")
    meta = read_json(path)
    if "hooked_transformer_config" not in meta:
        raise ValueError(f"{path}: no 'hooked_transformer_config' entry; not a mechflow model dir")
    return meta["hooked_transformer_config"]


def check_tokens(
    path: str | os.PathLike, *, d_vocab: int, n_ctx: int, flag: str = "--tokens"
) -> Int[np.ndarray, "seq pos"]:
    """Load a token file and check it fits the model (ids < d_vocab, length <= n_ctx)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{flag}: token file not found: {path}")
    tokens = load_tokens(path)
    if tokens.shape[0] == 0:
        raise ValueError(f"{flag}: {path} holds no sequences")
    if tokens.shape[1] > n_ctx:
        raise ValueError(
            f"{flag}: {path} has sequences of length {tokens.shape[1]} > n_ctx={n_ctx}"
        )
    if int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab:
        raise ValueError(
            f"{flag}: {path} has token ids in [{int(tokens.min())}, {int(tokens.max())}], "
            f"outside [0, d_vocab={d_vocab})"
        )
    return tokens


def check_repeated(tokens: Int[np.ndarray, "seq pos"], half_len: int, source: str) -> None:
    """Check ``tokens`` is ``[BOS] + r + r`` with ``len(r) == half_len`` (the induction probe)."""
    if half_len < 2:
        raise ValueError(f"half_len must be >= 2, got {half_len}")
    if tokens.shape[1] != 1 + 2 * half_len:
        raise ValueError(
            f"{source}: sequences have {tokens.shape[1]} positions, but [BOS] + r + r with "
            f"half_len={half_len} has {1 + 2 * half_len}"
        )
    first = np.asarray(tokens[:, 1 : half_len + 1])
    second = np.asarray(tokens[:, half_len + 1 :])
    bad = np.flatnonzero((first != second).any(axis=1))
    if bad.size:
        raise ValueError(
            f"{source}: {bad.size} sequence(s) (first: row {bad[0]}) are not r + r repeats "
            f"with half_len={half_len}"
        )


def read_repeated_inputs(
    model_dir: str | os.PathLike, tokens_path: str | os.PathLike, half_len: int
) -> tuple[dict[str, Any], Int[np.ndarray, "seq pos"]]:
    """The model's config and its checked ``[BOS] + r + r`` ``--tokens``: what every induction
    step reads first, so a bad input fails before TransformerLens loads."""
    cfg = read_model_config(model_dir)
    tokens = check_tokens(tokens_path, d_vocab=cfg["d_vocab"], n_ctx=cfg["n_ctx"])
    check_repeated(tokens, half_len, f"--tokens {tokens_path}")
    return cfg, tokens


def load_model_and_tokens(
    model_dir: str | os.PathLike,
    tokens_path: str | os.PathLike,
    device,
    sequences: int | None = None,
) -> tuple[Any, Int[np.ndarray, "seq pos"]]:
    """A saved model and its checked ``--tokens`` (``sequences`` rows spread evenly over them,
    see ``spread_rows``; all without): checked against the model's config before TransformerLens
    loads."""
    from mechflow.models.build import load_model

    cfg = read_model_config(model_dir)
    tokens = check_tokens(tokens_path, d_vocab=cfg["d_vocab"], n_ctx=cfg["n_ctx"])
    if sequences is not None:
        tokens = spread_rows(tokens, sequences)
    return load_model(model_dir, device=device), tokens
