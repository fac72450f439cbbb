"""Toy Models of Superposition (Elhage et al. 2022): x' = ReLU(WᵀW x + b), trained in batches.

``n_instances`` independent models, each with its own feature probability, are trained at once
as one module with an instance axis: Adam's per-parameter updates keep them independent, and one
run sweeps sparsity. The loss is the importance-weighted MSE of the paper, summed over instances.

Runs on the CPU on purpose: the models are a few hundred parameters per instance, so a GPU spends
its time launching kernels; and one ``torch.Generator`` on the CPU keeps runs bit-reproducible.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor, nn

from mechflow.artifacts import load_safetensors, read_json, save_safetensors, write_json
from mechflow.models.config import strict_from_dict
from mechflow.progress import Progress

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "cfg.json"
WEIGHTS_SHA256_KEY = "weights_sha256"  # cfg.json's record of the weights file
LR_SCHEDULES = ("constant", "cosine")
LOG_COLUMNS = ["step", "instance", "feature_probability", "loss", "lr"]


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"toy_model.{name} must be a positive integer, got {value!r}")


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"toy_model.{name}: probabilities must lie in (0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class ToyModelConfig:
    """A batch of toy models that differ only in how often their features are active.

    Args:
        n_features: n, input features (and outputs).
        d_hidden: m < n, hidden dimensions the features are squeezed through.
        n_instances: models trained side by side, one per feature probability.
        feature_probability: per-instance probability p that a feature is active (sparsity
            S = 1 - p); exactly n_instances values. Give this or feature_probability_range.
        feature_probability_range: (min, max): instances get log-spaced probabilities from max
            (instance 0, densest) down to min, as the paper's ``20 ** -linspace(0, 1)`` sweeps.
        importance_decay: importance_i = importance_decay ** i (0.9 and 0.7 in the paper).
        importance_min: alternatively importance_i = importance_min ** (i / (n - 1)), so the
            last feature has importance_min (``100 ** -linspace(0, 1)`` is 0.01).
        steps, batch_size, lr: Adam training. The paper's notebook runs 10k steps of 1024 at a
            constant 1e-3; 2k steps at 1e-2 with cosine decay reach the same solutions 5x faster.
        lr_schedule: "constant" or "cosine" (decays to 0 at the last step).
        log_every: steps between loss-log rows.
        seed: weight-initialisation and batch seed.
    """

    n_features: int
    d_hidden: int
    n_instances: int = 1
    feature_probability: tuple[float, ...] | None = None
    feature_probability_range: tuple[float, float] | None = None
    importance_decay: float = 1.0
    importance_min: float | None = None
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    log_every: int = 100
    seed: int = 0

    def __post_init__(self):
        for name in ("n_features", "d_hidden", "n_instances", "steps", "batch_size", "log_every"):
            _positive_int(name, getattr(self, name))
        if self.d_hidden >= self.n_features:
            raise ValueError(
                f"toy_model.d_hidden={self.d_hidden} must be < n_features={self.n_features}: "
                "with a dimension per feature there is nothing to superpose"
            )
        given = self.feature_probability, self.feature_probability_range
        if (given[0] is None) == (given[1] is None):
            raise ValueError(
                "toy_model.feature_probability / toy_model.feature_probability_range: "
                "give exactly one of them"
            )
        if self.feature_probability is not None:
            probs = tuple(
                _probability("feature_probability", p) for p in self._seq(self.feature_probability)
            )
            if len(probs) != self.n_instances:
                raise ValueError(
                    f"toy_model.feature_probability has {len(probs)} values, "
                    f"n_instances is {self.n_instances}"
                )
            object.__setattr__(self, "feature_probability", probs)
        else:
            bounds = self._seq(self.feature_probability_range, "feature_probability_range")
            if len(bounds) != 2:
                raise ValueError(
                    f"toy_model.feature_probability_range must be [min, max], got {bounds!r}"
                )
            low, high = (_probability("feature_probability_range", p) for p in bounds)
            if low > high:
                raise ValueError(
                    f"toy_model.feature_probability_range: min {low} is greater than max {high}"
                )
            object.__setattr__(self, "feature_probability_range", (low, high))
        if not isinstance(self.importance_decay, int | float) or self.importance_decay <= 0:
            raise ValueError(
                f"toy_model.importance_decay must be > 0, got {self.importance_decay!r}"
            )
        if self.importance_min is not None:
            if not isinstance(self.importance_min, int | float) or not (
                0 < self.importance_min <= 1
            ):
                raise ValueError(
                    f"toy_model.importance_min must lie in (0, 1], got {self.importance_min!r}"
                )
            if self.importance_decay != 1.0:
                raise ValueError(
                    "toy_model.importance_min / toy_model.importance_decay: give at most one"
                )
        if not isinstance(self.lr, int | float) or not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"toy_model.lr must be a finite number > 0, got {self.lr!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"toy_model.lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"toy_model.seed must be an integer >= 0, got {self.seed!r}")

    @staticmethod
    def _seq(value: Any, name: str = "feature_probability") -> tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"toy_model.{name} must be a list of numbers, got {value!r}")
        return tuple(value)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return strict_from_dict(cls, data, "toy_model")

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def probabilities(self) -> Float[np.ndarray, " instances"]:
        if self.feature_probability is not None:
            return np.asarray(self.feature_probability, dtype=np.float64)
        low, high = self.feature_probability_range
        return np.geomspace(high, low, self.n_instances)

    def importance(self) -> Float[np.ndarray, " features"]:
        i = np.arange(self.n_features, dtype=np.float64)
        if self.importance_min is not None:
            return self.importance_min ** (i / max(self.n_features - 1, 1))
        return self.importance_decay**i


class ToyModel(nn.Module):
    """``n_instances`` independent models x' = ReLU(WᵀW x + b) with W: (d_hidden, n_features)."""

    def __init__(self, n_instances: int, n_features: int, d_hidden: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(n_instances, d_hidden, n_features))
        self.b_final = nn.Parameter(torch.zeros(n_instances, n_features))

    @classmethod
    def from_config(cls, cfg: ToyModelConfig) -> Self:
        return cls(cfg.n_instances, cfg.n_features, cfg.d_hidden)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_instances, d_hidden, n_features)."""
        return tuple(self.W.shape)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Xavier-normal W per instance, zero bias, drawn from ``generator``."""
        _, d_hidden, n_features = self.W.shape
        std = math.sqrt(2.0 / (d_hidden + n_features))
        self.W.copy_(torch.randn(self.W.shape, generator=generator) * std)
        self.b_final.zero_()

    def forward(
        self, features: Float[Tensor, "instances batch features"]
    ) -> Float[Tensor, "instances batch features"]:
        hidden = torch.bmm(features, self.W.mT)  # instances batch hidden
        return torch.relu(torch.baddbmm(self.b_final[:, None, :], hidden, self.W))


def generate_batch(
    batch_size: int,
    probability: Float[Tensor, "instances features"],
    generator: torch.Generator,
) -> Float[Tensor, "instances batch features"]:
    """Each feature is 0 with probability 1 - p, else uniform on [0, 1], independently.

    One uniform draw u per entry does both: the feature is active when u < p, and then u / p is
    uniform on [0, 1]. Instance-major, so the forward pass is two batched matmuls.
    """
    n_instances, n_features = probability.shape
    p = probability[:, None, :]
    u = torch.rand((n_instances, batch_size, n_features), generator=generator)
    return torch.where(u < p, u / p, torch.zeros(()))


def importance_weighted_mse(
    out: Float[Tensor, "instances batch features"],
    target: Float[Tensor, "instances batch features"],
    importance: Float[Tensor, "instances features"],
) -> Float[Tensor, " instances"]:
    """The paper's loss, mean over batch and features: one value per instance."""
    return (importance[:, None, :] * (target - out) ** 2).mean(dim=(1, 2))


def _lr_factor(schedule: str, step: int, steps: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))
    return 1.0


_TRAIN_COLUMNS = ["step", "instance", "loss", "lr"]  # train_instances' log


def train_instances(
    model: ToyModel,
    probability: Float[Tensor, "instances features"],
    importance: Float[Tensor, "instances features"],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    lr_schedule: str = "constant",
    log_every: int = 100,
    generator: torch.Generator,
    progress: bool = True,
    on_log: Callable[[list[dict[str, Any]]], None] | None = None,
    desc: str = "toy models",
) -> pd.DataFrame:
    """Train in place; returns the loss log (step, instance, loss, lr), long format.

    ``probability`` and ``importance`` are per instance and feature, so one call can sweep
    sparsity (train_toy_model) or sparsity x importance (the phase diagram). Each logged
    step's rows are handed to ``on_log`` as they are logged.
    """
    n_instances, _, n_features = model.shape
    for name, tensor in (("probability", probability), ("importance", importance)):
        if tuple(tensor.shape) != (n_instances, n_features):
            raise ValueError(
                f"{name} must be (instances, features) = {(n_instances, n_features)}, "
                f"got {tuple(tensor.shape)}"
            )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rows = []
    model.train()
    bar = Progress(range(1, steps + 1), total=steps, desc=desc, enabled=progress, logger=log)
    for step in bar:
        step_lr = lr * _lr_factor(lr_schedule, step - 1, steps)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        batch = generate_batch(batch_size, probability, generator)
        losses = importance_weighted_mse(model(batch), batch, importance)  # instances
        loss = losses.sum()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"toy-model training diverged: loss {loss.item()} at {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            logged = [(step, i, v, step_lr) for i, v in enumerate(losses.tolist())]
            rows += logged
            bar.set_postfix(loss=f"{loss.item():.4g}")
            if on_log is not None:
                on_log([dict(zip(_TRAIN_COLUMNS, row, strict=True)) for row in logged])
    model.eval()
    return pd.DataFrame(rows, columns=_TRAIN_COLUMNS)


def train_toy_model(
    cfg: ToyModelConfig,
    progress: bool = True,
    on_log: Callable[[list[dict[str, Any]]], None] | None = None,
) -> tuple[ToyModel, pd.DataFrame]:
    """A trained model and its loss log (step, instance, feature_probability, loss, lr).

    The same config gives the same weights: initialisation and every batch come from one
    generator seeded with ``cfg.seed``. ``on_log`` gets the log's rows as they are logged.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    model = ToyModel.from_config(cfg)
    model.reset_parameters(generator)
    probs = cfg.probabilities()
    probability = torch.tensor(probs, dtype=torch.float32)[:, None].expand(-1, cfg.n_features)
    importance = torch.tensor(cfg.importance(), dtype=torch.float32).expand(cfg.n_instances, -1)

    def with_probability(rows):
        on_log([{**r, "feature_probability": float(probs[r["instance"]])} for r in rows])

    log_df = train_instances(
        model,
        probability,
        importance,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_schedule=cfg.lr_schedule,
        log_every=cfg.log_every,
        generator=generator,
        progress=progress,
        on_log=None if on_log is None else with_probability,
    )
    log_df.insert(2, "feature_probability", probs[log_df["instance"].to_numpy()])
    return model, log_df[LOG_COLUMNS]


def save_toy_model(
    model: ToyModel, cfg: ToyModelConfig, out_dir: str | os.PathLike, extra: dict | None = None
) -> Path:
    """``model.safetensors`` then ``cfg.json`` (written last: its presence means complete).

    ``cfg.json`` records the weights' sha256, which :func:`load_toy_model` checks.
    """
    if model.shape != (cfg.n_instances, cfg.d_hidden, cfg.n_features):
        raise ValueError(f"model shape {model.shape} does not match its config {cfg}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    digest = save_safetensors(state, weights)
    meta = {"toy_model_config": cfg.to_dict(), **(extra or {}), WEIGHTS_SHA256_KEY: digest}
    write_json(meta, out_dir / CONFIG_FILE)
    return weights


def read_toy_config(model_dir: str | os.PathLike) -> ToyModelConfig:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"toy-model config not found: {path}")
    meta = read_json(path)
    if "toy_model_config" not in meta:
        raise ValueError(f"{path}: no 'toy_model_config' entry; not a toy-model directory")
    return ToyModelConfig.from_dict(meta["toy_model_config"])


def load_toy_model(model_dir: str | os.PathLike) -> tuple[ToyModel, ToyModelConfig]:
    """Load weights without unpickling; shapes must match the saved config."""
    cfg = read_toy_config(model_dir)
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"toy-model weights not found: {weights}")
    model = ToyModel.from_config(cfg)
    digest = read_json(Path(model_dir) / CONFIG_FILE).get(WEIGHTS_SHA256_KEY)  # None: older
    model.load_state_dict(load_safetensors(weights, sha256=digest), strict=True)
    model.eval()
    return model, cfg
