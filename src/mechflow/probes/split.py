"""Train/validation split by group: rows of one game (or prompt) are never on both sides.

Rows of a game share most of their board, so a row-level split would let a probe memorise a
game from its training rows and be scored on its neighbours: the validation accuracy would
measure memory, not a linear readout.
"""

from __future__ import annotations

import numpy as np


def split_by_group(groups: np.ndarray, validation_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask over rows, True for validation: ``round(fraction * groups)`` whole
    groups (at least one, and at least one left for training), chosen by ``seed``.

    The choice depends only on the set of group ids and the seed, not on the rows' order.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups: expected one group id per row, got shape {groups.shape}")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
    ids = np.unique(groups)
    if len(ids) < 2:
        raise ValueError(f"groups: need at least 2 distinct groups to split, got {len(ids)}")
    n_val = min(max(1, round(validation_fraction * len(ids))), len(ids) - 1)
    chosen = np.random.default_rng(seed).permutation(len(ids))[:n_val]
    return np.isin(groups, ids[chosen])
