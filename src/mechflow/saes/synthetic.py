"""Synthetic activations with known features: sparse sums of random unit directions.

The toy setting of Sharkey et al. (2022) and Bricken et al. (2023): with ground truth known,
``mechflow.saes.evaluate.feature_recovery`` measures how many true directions an SAE found.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float


class SyntheticData(NamedTuple):
    acts: Float[torch.Tensor, "tokens d_in"]
    features: Float[torch.Tensor, "n_features d_in"]  # unit rows


def sparse_feature_data(
    *,
    n_tokens: int,
    d_in: int,
    n_features: int,
    p_active: float,
    seed: int = 0,
    noise: float = 0.0,
) -> SyntheticData:
    """Each feature fires independently with probability ``p_active``, magnitude U(0, 2)."""
    if not 0 < p_active <= 1:
        raise ValueError(f"p_active must lie in (0, 1], got {p_active}")
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n_features, d_in, generator=gen)
    features /= features.norm(dim=1, keepdim=True)
    active = torch.rand(n_tokens, n_features, generator=gen) < p_active
    coeffs = torch.rand(n_tokens, n_features, generator=gen) * 2 * active  # tokens n_features
    acts = coeffs @ features  # tokens d_in
    if noise:
        acts += noise * torch.randn(n_tokens, d_in, generator=gen)
    return SyntheticData(acts, features)
