"""Superposition measures of toy models (Elhage et al. 2022) as tidy tables, and the phase map.

With W: (instances, d_hidden m, n_features n) and W_i its i-th column (feature i's direction):

- ``WᵀW``: how features interfere; identity on represented features means no superposition.
- ``norm`` ‖W_i‖: ~1 when feature i is represented, ~0 when it is dropped.
- ``superposition`` Σ_{j≠i} (Ŵ_i·W_j)²: how much other features project onto feature i.
- ``dimensionality`` D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²: the fraction of a dimension feature i gets
  (1 alone, 1/2 in an antipodal pair, 2/3 in a triangle, 2/5 in a pentagon, 0 dropped).
- ``dims_per_feature`` m / ‖W‖_F² per instance (its inverse: features per dimension), which the
  paper plots against 1/(1-S) to show it sticking at 1/2.

The phase map trains n=2, m=1 models over relative importance x feature density and names what
the second ("extra") feature gets: nothing, a dedicated dimension, or an antipodal share.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from mechflow.experiments.superposition.toy_model import (
    LR_SCHEDULES,
    ToyModel,
    generate_batch,
    importance_weighted_mse,
    train_instances,
)
from mechflow.models.config import strict_from_dict

log = logging.getLogger(__name__)

REPRESENTED_NORM = 0.5  # ‖W_i‖ above this counts as represented (a learned feature has ~1)
STICKY_FRACTIONS = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8)  # D_i of the paper's geometries

WTW_COLUMNS = ["model", "instance", "i", "j", "value"]
FEATURE_COLUMNS = [
    "model",
    "instance",
    "feature_probability",
    "sparsity",
    "feature",
    "importance",
    "bias",
    "norm",
    "superposition",
    "dimensionality",
    "represented",
]
INSTANCE_COLUMNS = [
    "model",
    "instance",
    "feature_probability",
    "sparsity",
    "inverse_density",
    "d_hidden",
    "n_features",
    "dims_per_feature",
    "features_per_dim",
    "n_represented",
    "fraction_represented",
]
PHASES = ("not represented", "dedicated dimension", "superposition")
UNCLASSIFIED = "unclassified"
PHASE_COLUMNS = [
    "cell",
    "feature_probability",
    "sparsity",
    "relative_importance",
    "norm_1",
    "norm_2",
    "cosine",
    "bias_1",
    "bias_2",
    "loss",
    "phase",
]


def _check_w(W: np.ndarray) -> np.ndarray:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 3:
        raise ValueError(f"W must be (instances, d_hidden, n_features), got shape {W.shape}")
    return W


def gram(W: Float[np.ndarray, "instances hidden features"]) -> np.ndarray:
    """WᵀW: (instances, features, features)."""
    W = _check_w(W)
    return np.einsum("ihf,ihg->ifg", W, W)


def feature_norms(W: Float[np.ndarray, "instances hidden features"]) -> np.ndarray:
    """‖W_i‖: (instances, features)."""
    return np.linalg.norm(_check_w(W), axis=1)


def _overlaps_squared(W: np.ndarray) -> np.ndarray:
    """(Ŵ_i·W_j)² for every i, j: (instances, features i, features j); 0 rows for W_i = 0."""
    G = gram(W)
    norms = np.sqrt(np.clip(np.einsum("iff->if", G), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = np.where(norms[..., None] > 0, G / norms[..., None], 0.0)
    return unit**2


def superposition(W: Float[np.ndarray, "instances hidden features"]) -> np.ndarray:
    """Σ_{j≠i} (Ŵ_i·W_j)²: (instances, features); 0 when nothing else projects onto feature i."""
    sq = _overlaps_squared(W)
    return sq.sum(axis=2) - np.einsum("iff->if", sq)


def dimensionality(W: Float[np.ndarray, "instances hidden features"]) -> np.ndarray:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²: (instances, features); 0 for a feature with W_i = 0.

    Equal to ‖W_i‖⁴ / Σ_j (W_i·W_j)², which is how it is computed (no division by ‖W_i‖).
    """
    G = gram(W)
    diag = np.einsum("iff->if", G)
    denom = (G**2).sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, diag**2 / denom, 0.0)


def dims_per_feature(W: Float[np.ndarray, "instances hidden features"]) -> np.ndarray:
    """m / ‖W‖_F² per instance: 1 with one feature per dimension, 1/2 for antipodal pairs."""
    W = _check_w(W)
    frob = (W**2).sum(axis=(1, 2))
    with np.errstate(divide="ignore"):
        return np.where(frob > 0, W.shape[1] / frob, np.inf)


def represented_fraction(
    W: Float[np.ndarray, "instances hidden features"], threshold: float = REPRESENTED_NORM
) -> np.ndarray:
    """Fraction of features per instance with ‖W_i‖ > threshold."""
    return (feature_norms(W) > threshold).mean(axis=1)


def _probabilities(probability: np.ndarray, n_instances: int) -> np.ndarray:
    probability = np.asarray(probability, dtype=np.float64).reshape(-1)
    if probability.shape != (n_instances,):
        raise ValueError(
            f"need one feature probability per instance ({n_instances}), got {probability.shape}"
        )
    return probability


def wtw_table(W: Float[np.ndarray, "instances hidden features"], model: str) -> pd.DataFrame:
    """One row per (instance, i, j) of WᵀW."""
    G = gram(W)
    inst, i, j = np.meshgrid(*(np.arange(s) for s in G.shape), indexing="ij")
    return pd.DataFrame(
        {
            "model": model,
            "instance": inst.ravel(),
            "i": i.ravel(),
            "j": j.ravel(),
            "value": G.ravel(),
        },
        columns=WTW_COLUMNS,
    )


def feature_table(
    W: Float[np.ndarray, "instances hidden features"],
    b: Float[np.ndarray, "instances features"],
    probability: Float[np.ndarray, " instances"],
    importance: Float[np.ndarray, " features"],
    model: str,
    threshold: float = REPRESENTED_NORM,
) -> pd.DataFrame:
    """One row per (instance, feature): bias, norm, superposition, dimensionality."""
    W = _check_w(W)
    n_instances, _, n_features = W.shape
    probability = _probabilities(probability, n_instances)
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (n_instances, n_features):
        raise ValueError(
            f"b must be (instances, features) = {(n_instances, n_features)}, got {b.shape}"
        )
    importance = np.broadcast_to(
        np.asarray(importance, dtype=np.float64), (n_instances, n_features)
    )
    norms = feature_norms(W)
    inst, feat = np.meshgrid(np.arange(n_instances), np.arange(n_features), indexing="ij")
    return pd.DataFrame(
        {
            "model": model,
            "instance": inst.ravel(),
            "feature_probability": probability[inst.ravel()],
            "sparsity": 1.0 - probability[inst.ravel()],
            "feature": feat.ravel(),
            "importance": importance.ravel(),
            "bias": b.ravel(),
            "norm": norms.ravel(),
            "superposition": superposition(W).ravel(),
            "dimensionality": dimensionality(W).ravel(),
            "represented": (norms > threshold).ravel(),
        },
        columns=FEATURE_COLUMNS,
    )


def instance_table(
    W: Float[np.ndarray, "instances hidden features"],
    probability: Float[np.ndarray, " instances"],
    model: str,
    threshold: float = REPRESENTED_NORM,
) -> pd.DataFrame:
    """One row per instance: dimensions per feature and represented features against sparsity."""
    W = _check_w(W)
    n_instances, d_hidden, n_features = W.shape
    probability = _probabilities(probability, n_instances)
    dpf = dims_per_feature(W)
    represented = feature_norms(W) > threshold
    return pd.DataFrame(
        {
            "model": model,
            "instance": np.arange(n_instances),
            "feature_probability": probability,
            "sparsity": 1.0 - probability,
            "inverse_density": 1.0 / probability,  # 1/(1-S), the paper's x axis
            "d_hidden": d_hidden,
            "n_features": n_features,
            "dims_per_feature": dpf,
            "features_per_dim": 1.0 / dpf,
            "n_represented": represented.sum(axis=1),
            "fraction_represented": represented.mean(axis=1),
        },
        columns=INSTANCE_COLUMNS,
    )


# -- the n = 2, m = 1 phase diagram ------------------------------------------------------------


def _range(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"phase_map.{name} must be [min, max], got {value!r}")
    low, high = value
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ValueError(f"phase_map.{name} must be two numbers, got {value!r}")
    if not 0 < low <= high:
        raise ValueError(f"phase_map.{name} needs 0 < min <= max, got {value!r}")
    return float(low), float(high)


@dataclass(frozen=True, kw_only=True)
class PhaseMapConfig:
    """A grid of two-feature models: relative importance x feature density, trained at once.

    Args:
        density_range: (min, max) feature probability 1 - S, log-spaced over n_densities.
        n_densities: grid columns.
        importance_range: (min, max) importance of feature 2 relative to feature 1 (which is 1),
            log-spaced over n_importances.
        n_importances: grid rows.
        restarts: independent initialisations per cell; the lowest evaluation loss is kept, since
            small models can stall in a worse optimum.
        steps, batch_size, lr, lr_schedule: Adam training of every cell.
        eval_batch_size: samples for the loss that picks the restart.
        threshold: ‖W_i‖ above which a feature counts as represented.
        seed: initialisation and batch seed.
    """

    density_range: tuple[float, float] = (0.05, 1.0)
    n_densities: int = 8
    importance_range: tuple[float, float] = (0.1, 10.0)
    n_importances: int = 9
    restarts: int = 6
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    eval_batch_size: int = 8192
    threshold: float = REPRESENTED_NORM
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "density_range", _range("density_range", self.density_range))
        if self.density_range[1] > 1:
            raise ValueError(
                f"phase_map.density_range: probabilities lie in (0, 1], got {self.density_range}"
            )
        object.__setattr__(
            self, "importance_range", _range("importance_range", self.importance_range)
        )
        for name in (
            "n_densities",
            "n_importances",
            "restarts",
            "steps",
            "batch_size",
            "eval_batch_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"phase_map.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.lr, int | float) or not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"phase_map.lr must be a finite number > 0, got {self.lr!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"phase_map.lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if not isinstance(self.threshold, int | float) or not 0 < self.threshold < 1:
            raise ValueError(f"phase_map.threshold must lie in (0, 1), got {self.threshold!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"phase_map.seed must be an integer >= 0, got {self.seed!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return strict_from_dict(cls, data, "phase_map")

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def densities(self) -> np.ndarray:
        low, high = self.density_range
        return np.geomspace(high, low, self.n_densities)

    def importances(self) -> np.ndarray:
        low, high = self.importance_range
        return np.geomspace(low, high, self.n_importances)


def classify_phase(
    norm_1: float, norm_2: float, cosine: float, threshold: float = REPRESENTED_NORM
) -> str:
    """What the extra feature (feature 2) gets in a two-feature model."""
    rep_1, rep_2 = norm_1 > threshold, norm_2 > threshold
    if rep_1 and rep_2:
        return "superposition" if cosine < -0.5 else UNCLASSIFIED
    if rep_2:
        return "dedicated dimension"
    if rep_1:
        return "not represented"
    return UNCLASSIFIED


def map_phases(cfg: PhaseMapConfig, progress: bool = True) -> pd.DataFrame:
    """Train every (importance, density) cell ``restarts`` times; keep each cell's best restart."""
    densities, importances = cfg.densities(), cfg.importances()
    imp_grid, dens_grid = np.meshgrid(importances, densities, indexing="ij")
    imp_cells, dens_cells = imp_grid.ravel(), dens_grid.ravel()  # cells, row-major by importance
    n_cells = imp_cells.size
    # instance = restart * n_cells + cell
    probability = torch.tensor(np.tile(dens_cells, cfg.restarts), dtype=torch.float32)
    probability = probability[:, None].expand(-1, 2)
    importance = torch.tensor(
        np.tile(np.stack([np.ones(n_cells), imp_cells], axis=1), (cfg.restarts, 1)),
        dtype=torch.float32,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    model = ToyModel(n_cells * cfg.restarts, 2, 1)  # two features, one dimension
    model.reset_parameters(generator)
    log.info("training %d cells x %d restarts for %d steps", n_cells, cfg.restarts, cfg.steps)
    train_instances(
        model,
        probability,
        importance,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_schedule=cfg.lr_schedule,
        log_every=cfg.steps,
        generator=generator,
        progress=progress,
        desc="phase map",
    )
    with torch.no_grad():
        # one evaluation batch per cell, shared by its restarts so their losses compare
        batch = generate_batch(cfg.eval_batch_size, probability[:n_cells], generator)
        batch = batch.repeat(cfg.restarts, 1, 1)
        loss = importance_weighted_mse(model(batch), batch, importance)
    loss = loss.numpy().reshape(cfg.restarts, n_cells)
    best = loss.argmin(axis=0)  # cells
    W = model.W.detach().numpy().astype(np.float64).reshape(cfg.restarts, n_cells, 1, 2)
    b = model.b_final.detach().numpy().astype(np.float64).reshape(cfg.restarts, n_cells, 2)
    cells = np.arange(n_cells)
    W, b, loss = W[best, cells], b[best, cells], loss[best, cells]
    norms = feature_norms(W)  # cells 2
    dot = np.einsum("ch,ch->c", W[:, :, 0], W[:, :, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where(norms.prod(axis=1) > 0, dot / norms.prod(axis=1), 0.0)
    phases = [
        classify_phase(n1, n2, c, cfg.threshold)
        for n1, n2, c in zip(norms[:, 0], norms[:, 1], cosine, strict=True)
    ]
    return pd.DataFrame(
        {
            "cell": cells,
            "feature_probability": dens_cells,
            "sparsity": 1.0 - dens_cells,
            "relative_importance": imp_cells,
            "norm_1": norms[:, 0],
            "norm_2": norms[:, 1],
            "cosine": cosine,
            "bias_1": b[:, 0],
            "bias_2": b[:, 1],
            "loss": loss,
            "phase": phases,
        },
        columns=PHASE_COLUMNS,
    )
