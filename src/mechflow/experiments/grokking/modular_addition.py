"""The modular-addition task of Nanda et al. 2023: every pair ``a b =`` labelled ``(a + b) mod p``.

The whole task has p² examples, so the dataset is the split, not a file: train and test rows are
a seeded permutation of all pairs, recomputed identically wherever they are needed.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Int

from mechflow.models.config import Architecture


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def check_task(modulus: int, train_fraction: float) -> None:
    """Refuse settings the experiment cannot use, naming the key."""
    if not isinstance(modulus, int) or modulus < 3 or not is_prime(modulus):
        raise ValueError(
            f"modulus must be an odd prime (the Fourier analysis needs Z_p to be a field), "
            f"got {modulus!r}"
        )
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction!r}")
    n_train = int(round(train_fraction * modulus**2))
    if not 0 < n_train < modulus**2:
        raise ValueError(
            f"train_fraction {train_fraction} of {modulus**2} pairs leaves an empty train or test set"
        )


def all_pairs(modulus: int) -> tuple[Int[np.ndarray, "pair 3"], Int[np.ndarray, " pair"]]:
    """Inputs ``[a, b, =]`` (``=`` is token ``modulus``) for a, b in Z_p, row a*p + b; labels."""
    a, b = np.divmod(np.arange(modulus * modulus), modulus)
    inputs = np.stack([a, b, np.full_like(a, modulus)], axis=1)  # pair 3
    return inputs.astype(np.int64), ((a + b) % modulus).astype(np.int64)


def train_test_split(
    modulus: int, train_fraction: float, seed: int
) -> tuple[Int[np.ndarray, " train"], Int[np.ndarray, " test"]]:
    """Row indices of the training and held-out pairs (sorted), from a seeded permutation."""
    check_task(modulus, train_fraction)
    order = np.random.default_rng(seed).permutation(modulus * modulus)
    n_train = int(round(train_fraction * modulus * modulus))
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def task_architecture(architecture: dict, modulus: int) -> Architecture:
    """The configured architecture with the sizes the task fixes: ``a b =`` in, p residues out."""
    fixed = {"n_ctx": 3, "d_vocab": modulus + 1, "d_vocab_out": modulus}
    clash = {k: architecture[k] for k in fixed if k in architecture and architecture[k] != fixed[k]}
    if clash:
        raise ValueError(f"architecture {clash} contradicts modulus {modulus}: expected {fixed}")
    return Architecture.from_dict({**architecture, **fixed})
