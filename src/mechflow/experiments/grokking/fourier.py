"""The Fourier basis of Z_p and the grokking model's weights and activations expressed in it.

Nanda et al. 2023: the trained model embeds a and b on a few key frequencies w_k = 2πk/p and
computes cos(w_k(a+b−c)) with trigonometric identities. Here: the orthonormal basis, the norm of
the embedding per frequency, how much of each MLP neuron's (and attention head's) variance over
all (a, b) one frequency explains, and the key frequencies read off the neurons.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from jaxtyping import Float


def n_frequencies(p: int) -> int:
    return (p - 1) // 2


def fourier_basis(p: int) -> tuple[Float[np.ndarray, "basis x"], list[str]]:
    """Orthonormal rows: the constant, then cos k and sin k for k = 1..(p-1)/2 (p odd)."""
    if p < 3 or p % 2 == 0:
        raise ValueError(f"the Fourier basis needs an odd modulus, got {p}")
    x = np.arange(p)
    rows, labels = [np.ones(p)], ["const"]
    for k in range(1, n_frequencies(p) + 1):
        rows += [np.cos(2 * np.pi * k * x / p), np.sin(2 * np.pi * k * x / p)]
        labels += [f"cos {k}", f"sin {k}"]
    basis = np.stack(rows)  # basis x
    return basis / np.linalg.norm(basis, axis=1, keepdims=True), labels


def frequency_rows(k: int) -> list[int]:
    """Rows of the basis that belong to frequency k (cos, sin)."""
    return [2 * k - 1, 2 * k]


def embedding_fourier_norms(
    w_e: Float[np.ndarray, "p d_model"],
) -> pd.DataFrame:
    """Norm of the embedding along each basis vector, and its share per frequency.

    Rows: frequency (0 = constant), component (const/cos/sin), norm; plus ``share`` of the
    non-constant squared norm carried by the frequency (cos and sin together).
    """
    p = w_e.shape[0]
    basis, _ = fourier_basis(p)
    norms = np.linalg.norm(basis @ w_e, axis=1)  # basis
    total = float((norms[1:] ** 2).sum())
    rows = [{"frequency": 0, "component": "const", "norm": float(norms[0]), "share": np.nan}]
    for k in range(1, n_frequencies(p) + 1):
        cos_i, sin_i = frequency_rows(k)
        share = float((norms[cos_i] ** 2 + norms[sin_i] ** 2) / total) if total > 0 else 0.0
        rows.append(
            {"frequency": k, "component": "cos", "norm": float(norms[cos_i]), "share": share}
        )
        rows.append(
            {"frequency": k, "component": "sin", "norm": float(norms[sin_i]), "share": share}
        )
    return pd.DataFrame(rows)


def fourier_2d(
    maps: Float[np.ndarray, "a b unit"],
) -> Float[np.ndarray, "basis_a basis_b unit"]:
    """2-D Fourier coefficients of functions of (a, b), one per unit (neuron or head)."""
    basis, _ = fourier_basis(maps.shape[0])
    return np.einsum("ia,abu,jb->iju", basis, maps, basis, optimize=True)


def frequency_variance(
    coeffs: Float[np.ndarray, "basis_a basis_b unit"],
) -> tuple[Float[np.ndarray, "frequency unit"], Float[np.ndarray, " unit"]]:
    """Squared coefficients of each unit that involve only frequency k, and each unit's variance.

    Frequency k's terms: cos/sin k of a alone, of b alone, and their products: the terms
    cos(w(a+b)) and sin(w(a+b)) a neuron needs live there.
    """
    sq = coeffs**2
    variance = sq.sum(axis=(0, 1)) - sq[0, 0]  # unit; all but the constant
    per_k = []
    for k in range(1, n_frequencies(coeffs.shape[0]) + 1):
        idx = frequency_rows(k)
        block = sq[np.ix_(idx, idx)].sum(axis=(0, 1))
        block += sq[idx, 0].sum(axis=0) + sq[0, idx].sum(axis=0)
        per_k.append(block)
    return np.stack(per_k), variance  # frequency unit, unit


def unit_frequencies(
    maps: Float[np.ndarray, "a b unit"], unit_kind: str, live_tol: float = 1e-6
) -> pd.DataFrame:
    """Per unit: the fraction of its variance over (a, b) each frequency explains (long format).

    Units whose variance is below ``live_tol`` × the largest unit's are marked dead (a ReLU that
    never fires on the task) and get fraction 0.
    """
    per_k, variance = frequency_variance(fourier_2d(maps))
    live = variance > live_tol * max(float(variance.max()), 1e-30)
    fractions = np.where(live, per_k / np.where(live, variance, 1.0), 0.0)  # frequency unit
    k_idx, u_idx = np.meshgrid(np.arange(per_k.shape[0]), np.arange(per_k.shape[1]), indexing="ij")
    return pd.DataFrame(
        {
            "kind": unit_kind,
            "unit": u_idx.ravel(),
            "frequency": k_idx.ravel() + 1,
            "fraction_explained": fractions.ravel(),
            "live": np.repeat(live[None, :], per_k.shape[0], axis=0).ravel(),
        }
    )


def dominant_frequencies(unit_table: pd.DataFrame) -> pd.DataFrame:
    """Each live unit's best frequency and the fraction of its variance that frequency explains."""
    live = unit_table[unit_table["live"]]
    best = live.loc[live.groupby("unit")["fraction_explained"].idxmax()]
    return best[["kind", "unit", "frequency", "fraction_explained"]].reset_index(drop=True)


def key_frequencies(
    neuron_table: pd.DataFrame,
    embedding_table: pd.DataFrame,
    min_neuron_share: float = 0.05,
    min_fraction: float = 0.5,
) -> pd.DataFrame:
    """The key frequencies: those that dominate at least ``min_neuron_share`` of live neurons.

    A neuron counts for its best frequency when that frequency explains at least
    ``min_fraction`` of its variance (the paper's neuron clusters). Read off the neurons, not the
    embedding, so that the embedding's concentration on them is an independent check. Rows:
    frequency, n_neurons, neuron_share, embedding_share, sorted by frequency.
    """
    best = dominant_frequencies(neuron_table)
    n_live = max(len(best), 1)
    counts = best[best["fraction_explained"] >= min_fraction].groupby("frequency").size()
    keys = sorted(int(k) for k, n in counts.items() if n / n_live >= min_neuron_share)
    shares = embedding_table[embedding_table["component"] == "cos"].set_index("frequency")["share"]
    return pd.DataFrame(
        {
            "frequency": keys,
            "n_neurons": [int(counts[k]) for k in keys],
            "neuron_share": [float(counts[k] / n_live) for k in keys],
            "embedding_share": [float(shares.get(k, 0.0)) for k in keys],
        },
        columns=["frequency", "n_neurons", "neuron_share", "embedding_share"],
    )


def key_frequency_fraction(unit_table: pd.DataFrame, keys: list[int]) -> Float[np.ndarray, " unit"]:
    """Per live unit: the fraction of its variance all key frequencies together explain."""
    live = unit_table[unit_table["live"]]
    chosen = live[live["frequency"].isin(keys)]
    return (
        chosen.groupby("unit")["fraction_explained"]
        .sum()
        .reindex(live["unit"].unique(), fill_value=0.0)
        .to_numpy()
    )
