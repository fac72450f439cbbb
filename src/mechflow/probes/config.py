"""The linear-probe config: one frozen dataclass, validated without I/O or torch.

Kept free of torch imports so the workflow can validate a probe config at parse time. One
config trains every (hook, target) probe of a sweep: they share the optimiser settings, the
split and the data order, which is what lets them train as one batched optimisation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self

from mechflow.models.config import strict_from_dict


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """How multinomial logistic probes are trained.

    Args:
        n_classes: classes of every target (>= 2): labels are 0..n_classes-1.
        lr: AdamW learning rate (constant).
        weight_decay: AdamW's decoupled weight decay, on the weights only (never the bias).
        batch_size: training rows per step (every probe sees the same rows).
        max_epochs: passes over the training rows at most.
        patience: a probe stops after this many epochs without a better validation loss.
        tolerance: relative improvement of a probe's validation loss that counts as better.
        validation_fraction: share of the groups (e.g. games) held out for validation.
        standardize: inputs standardised per hook and feature with the training split's mean
            and std (the stats are saved with the probes and applied when predicting).
        ignore_index: the label of a row/target without one (masked out of loss and metrics).
        shuffle_buffer_rows: rows shuffled together when streaming (whole chunks gathered
            until at least this many); a source of at most this many rows is read once and
            kept. Memory: about rows x hooks x d_model x 4 bytes.
        seed: split and data order.
    """

    n_classes: int
    lr: float = 3e-3
    weight_decay: float = 0.01
    batch_size: int = 1024
    max_epochs: int = 50
    patience: int = 2
    tolerance: float = 1e-3
    validation_fraction: float = 0.2
    standardize: bool = True
    ignore_index: int = -1
    shuffle_buffer_rows: int = 65_536
    seed: int = 0

    def __post_init__(self):
        _check(_int_at_least(self.n_classes, 2), "n_classes", "must be an integer >= 2")
        _check(_positive(self.lr), "lr", "must be > 0")
        _check(
            _number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0"
        )
        for key in ("batch_size", "max_epochs", "patience", "shuffle_buffer_rows"):
            _check(_int_at_least(getattr(self, key), 1), key, "must be an integer >= 1")
        _check(_number(self.tolerance) and self.tolerance >= 0, "tolerance", "must be >= 0")
        _check(
            _number(self.validation_fraction) and 0 < self.validation_fraction < 1,
            "validation_fraction",
            "must lie in (0, 1)",
        )
        _check(isinstance(self.standardize, bool), "standardize", "must be true or false")
        _check(
            _integer(self.ignore_index) and not 0 <= self.ignore_index < self.n_classes,
            "ignore_index",
            f"must be an integer outside the class range 0..{self.n_classes - 1}",
        )
        _check(_int_at_least(self.seed, 0), "seed", "must be an integer >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return strict_from_dict(cls, data, "probes")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(value: Any, low: int) -> bool:
    return _integer(value) and value >= low


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and value == value
    )  # not NaN


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def _check(ok: Any, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"probes.{key}: {message}")
