"""Model architecture and training configs as frozen dataclasses, validated without I/O.

Kept free of TransformerLens imports so the workflow can validate configs and enumerate hook
names at parse time without paying ~6 s for ``import transformer_lens``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Self


def strict_from_dict(cls, data: dict[str, Any], where: str):
    """``cls(**data)``, but an unknown key is an error that names it and the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    return cls(**data)


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """A HookedTransformer architecture.

    Args:
        n_layers, d_model, n_heads, d_head, n_ctx, d_vocab: sizes, as in HookedTransformerConfig.
        attn_only: no MLP blocks (Elhage et al. 2021's attention-only models).
        d_mlp: MLP width; required unless attn_only.
        act_fn: MLP activation.
        normalization_type: "LN", "LNPre" or None (no LayerNorm, as in the grokking model).
        positional_embedding_type: "standard" (learned), "rotary" or "shortformer".
        attention_dir: "causal" or "bidirectional".
        d_vocab_out: output vocabulary when it differs from the input one (the grokking model
            reads ``a b =`` but predicts one of p residues); None means d_vocab.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    n_ctx: int
    d_vocab: int
    attn_only: bool = False
    d_mlp: int | None = None
    act_fn: str = "relu"
    normalization_type: str | None = "LN"
    positional_embedding_type: str = "standard"
    attention_dir: str = "causal"
    d_vocab_out: int | None = None

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx", "d_vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"architecture.{name} must be a positive integer, got {value!r}")
        if not self.attn_only and (self.d_mlp is None or self.d_mlp < 1):
            raise ValueError("architecture.d_mlp must be a positive integer unless attn_only")
        if self.d_vocab_out is not None and (
            not isinstance(self.d_vocab_out, int) or self.d_vocab_out < 1
        ):
            raise ValueError(
                f"architecture.d_vocab_out must be a positive integer, got {self.d_vocab_out!r}"
            )
        if self.normalization_type not in ("LN", "LNPre", None):
            raise ValueError(
                f"architecture.normalization_type: bad value {self.normalization_type!r}"
            )
        if self.attention_dir not in ("causal", "bidirectional"):
            raise ValueError(f"architecture.attention_dir: bad value {self.attention_dir!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return strict_from_dict(cls, data, "architecture")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """How a model is trained.

    Args:
        steps: optimiser steps.
        batch_size: sequences per step.
        lr, weight_decay, betas: AdamW settings.
        warmup_steps: linear learning-rate warm-up.
        lr_schedule: after the warm-up, ``constant`` or ``cosine`` (down to
            ``min_lr_fraction * lr`` at the last step).
        grad_clip: clip the global gradient norm to this (None: no clipping).
        checkpoints: steps at which weights are saved (for curves over training).
        seed: initialisation and batch-order seed.
        log_every: steps between loss-log rows.
        eval_every: steps between validation losses (a multiple of log_every; None: none).
        eval_sequences: validation sequences each validation loss averages over.
    """

    steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    min_lr_fraction: float = 0.1
    grad_clip: float | None = None
    checkpoints: tuple[int, ...] = field(default_factory=tuple)
    seed: int = 0
    log_every: int = 10
    eval_every: int | None = None
    eval_sequences: int = 64

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("training.steps and training.batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"training.lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"training.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )
        if not 0 <= self.min_lr_fraction <= 1:
            raise ValueError(
                f"training.min_lr_fraction must be in [0, 1], got {self.min_lr_fraction}"
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"training.grad_clip must be > 0, got {self.grad_clip}")
        if self.eval_every is not None and (
            self.eval_every < 1 or self.eval_every % self.log_every
        ):
            raise ValueError(
                f"training.eval_every ({self.eval_every}) must be a positive multiple of "
                f"log_every ({self.log_every})"
            )
        if self.eval_sequences < 1:
            raise ValueError(f"training.eval_sequences must be >= 1, got {self.eval_sequences}")
        bad = [s for s in self.checkpoints if not 0 <= s <= self.steps]
        if bad:
            raise ValueError(f"training.checkpoints {bad} lie outside [0, steps={self.steps}]")
        object.__setattr__(self, "checkpoints", tuple(sorted(set(self.checkpoints))))
        object.__setattr__(self, "betas", tuple(self.betas))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return strict_from_dict(cls, data, "training")


_BLOCK_HOOKS_ATTN = (
    "hook_resid_pre",
    "hook_attn_out",
    "hook_resid_post",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_z",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
)
_BLOCK_HOOKS_MLP = ("hook_resid_mid", "hook_mlp_out", "mlp.hook_pre", "mlp.hook_post")
_BLOCK_HOOKS_LN = ("ln1.hook_scale", "ln1.hook_normalized")
_BLOCK_HOOKS_LN_MLP = ("ln2.hook_scale", "ln2.hook_normalized")

HOOK_NAME_PATTERN = re.compile(
    r"^(hook_embed|hook_pos_embed|ln_final\.hook_(scale|normalized)|unembed\.hook_(in|out)"
    r"|blocks\.\d+\.(ln[12]\.|attn\.|mlp\.)?hook_[a-z_]+)$"
)


def hook_names(arch: Architecture) -> list[str]:
    """Full TransformerLens hook names of a model with this architecture, without building it.

    Covers the activations mechflow caches; a unit test checks it against ``model.hook_dict``.
    """
    names = ["hook_embed"]
    if arch.positional_embedding_type == "standard":
        names.append("hook_pos_embed")
    for layer in range(arch.n_layers):
        block = list(_BLOCK_HOOKS_ATTN)
        if arch.positional_embedding_type == "rotary":
            block += ["attn.hook_rot_q", "attn.hook_rot_k"]
        if not arch.attn_only:
            block += list(_BLOCK_HOOKS_MLP)
        if arch.normalization_type is not None:
            block += list(_BLOCK_HOOKS_LN)
            if not arch.attn_only:
                block += list(_BLOCK_HOOKS_LN_MLP)
        names += [f"blocks.{layer}.{hook}" for hook in block]
    if arch.normalization_type is not None:
        names += ["ln_final.hook_scale", "ln_final.hook_normalized"]
    names += ["unembed.hook_in", "unembed.hook_out"]
    return names


@dataclass(frozen=True, kw_only=True)
class FullBatchTrainingConfig:
    """Full-batch training on a classification task read at the last position (grokking).

    Args:
        epochs: optimiser steps, each over the whole training set.
        lr, weight_decay, betas: AdamW settings (the grokking paper: 1e-3, 1.0, (0.9, 0.98)).
        warmup_epochs: linear learning-rate warm-up.
        checkpoints: epochs at which weights are saved; every progress measure is computed
            from them after training.
        seed: initialisation seed.
        log_every: epochs between rows of the train/test loss log.
    """

    epochs: int
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_epochs: int = 0
    checkpoints: tuple[int, ...] = field(default_factory=tuple)
    seed: int = 0
    log_every: int = 10

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"training.epochs must be a positive integer, got {self.epochs!r}")
        if self.lr <= 0:
            raise ValueError(f"training.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"training.weight_decay must be >= 0, got {self.weight_decay}")
        if self.log_every < 1:
            raise ValueError(f"training.log_every must be >= 1, got {self.log_every}")
        bad = [e for e in self.checkpoints if not 0 <= e <= self.epochs]
        if bad:
            raise ValueError(f"training.checkpoints {bad} lie outside [0, epochs={self.epochs}]")
        object.__setattr__(self, "checkpoints", tuple(sorted(set(self.checkpoints))))
        object.__setattr__(self, "betas", tuple(self.betas))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return strict_from_dict(cls, data, "training")
