"""The sparse-autoencoder config: one frozen dataclass, validated without I/O or torch.

Kept free of torch imports so the workflow can validate ``experiments.saes`` at parse time.
Coefficients are in the units of the training loss, which is computed on inputs rescaled so
that E||x|| = sqrt(d_in) (``normalize_activations: expected_norm``), so one coefficient means
roughly the same sparsity at every hook and in every model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Self

from mechflow.models.config import HOOK_NAME_PATTERN, strict_from_dict

# Root-level hook points of other HookedRootModules (the toy models' ``hook_hidden``).
ROOT_HOOK = re.compile(r"^hook_[a-z_]+$")
ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")
# unit: decoder rows renormalised to 1 after every step (gradient parallel to them removed);
# free: rows unconstrained, the ReLU L1 penalty weighted by each row's norm (relu only).
DECODER_NORMS = ("unit", "free")
# auto: resample for relu, auxk for topk/batchtopk, none for jumprelu.
DEAD_LATENTS = ("auto", "none", "resample", "auxk")
NORMALIZATIONS = ("expected_norm", "none")
_SPARSITY_ARCHS = ("relu", "jumprelu")
_K_ARCHS = ("topk", "batchtopk")


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """How one SAE is built and trained.

    Args:
        architecture: relu (Bricken et al. 2023), topk (Gao et al. 2024), batchtopk (Bussmann
            et al. 2024) or jumprelu (Rajamanoharan et al. 2024).
        d_in: width of the activations (the hook's last axis, or its trailing axes flattened).
        hook_name: full TransformerLens hook name the SAE reads and is spliced into.
        d_sae: number of latents; give this or ``expansion_factor`` (both only if they agree).
        expansion_factor: d_sae = expansion_factor * d_in.
        l1_coefficient: sparsity coefficient: the L1 penalty of relu, the L0 penalty of jumprelu.
        k: active latents per token (topk) or on average per token (batchtopk).
        lr, adam_betas: Adam settings.
        lr_warmup_fraction: linear LR warm-up over this fraction of the steps.
        lr_decay_fraction: linear LR decay to zero over this final fraction of the steps.
        sparsity_warmup_fraction: linear warm-up of ``l1_coefficient`` from zero.
        batch_size: tokens per step.
        total_tokens: training tokens (several epochs when the store holds fewer).
        seed: initialisation, data order and resampling seed.
        normalize_activations: expected_norm rescales inputs to E||x|| = sqrt(d_in) while
            training (folded into the saved weights) or none.
        decoder_norm: unit or free (see DECODER_NORMS).
        dead_latents: auto, none, resample (relu) or auxk (topk, batchtopk).
        dead_after_tokens: a latent that has not fired for this many tokens is dead.
        aux_k: latents of the AuxK loss (default d_in // 2); aux_k_coefficient weights it.
        resample_every_tokens: relu resampling interval (default total_tokens // 5), only in
            the first half of training.
        jumprelu_init_threshold: JumpReLU threshold start; unset: sqrt(l1_coefficient), where
            the threshold settles (see mechflow.saes.jumprelu), so short runs need not climb
            there at Adam's pace of about lr per step. The paper starts at 0.001.
        jumprelu_bandwidth: rectangle-kernel width of JumpReLU's pseudo-gradients.
        batchtopk_threshold_decay: EMA rate of the inference threshold of batchtopk.
        skip_bos: drop position 0 (BOS, whose activations are outliers) from training data.
        shuffle_buffer_tokens: tokens from randomly chosen store chunks shuffled together.
        checkpoint_every: steps between resumable checkpoints (0: none).
        log_every: steps between rows of the training log.
    """

    architecture: str
    d_in: int
    hook_name: str
    d_sae: int | None = None
    expansion_factor: int | None = None
    l1_coefficient: float | None = None
    k: int | None = None
    lr: float = 4e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_fraction: float = 0.01
    lr_decay_fraction: float = 0.2
    sparsity_warmup_fraction: float = 0.05
    batch_size: int = 4096
    total_tokens: int = 10_000_000
    seed: int = 0
    normalize_activations: str = "expected_norm"
    decoder_norm: str = "unit"
    dead_latents: str = "auto"
    dead_after_tokens: int = 1_000_000
    aux_k: int | None = None
    aux_k_coefficient: float = 1 / 32
    resample_every_tokens: int | None = None
    jumprelu_init_threshold: float | None = None
    jumprelu_bandwidth: float = 0.001
    batchtopk_threshold_decay: float = 0.01
    skip_bos: bool = True
    shuffle_buffer_tokens: int = 262_144
    checkpoint_every: int = 1000
    log_every: int = 50

    def __post_init__(self):
        arch = self.architecture
        _check(arch in ARCHITECTURES, "architecture", f"{arch!r} is not one of {ARCHITECTURES}")
        _check(_pos_int(self.d_in), "d_in", f"must be a positive integer, got {self.d_in!r}")
        _check(
            isinstance(self.hook_name, str)
            and (HOOK_NAME_PATTERN.match(self.hook_name) or ROOT_HOOK.match(self.hook_name)),
            "hook_name",
            f"{self.hook_name!r} is not a full TransformerLens hook name "
            "(e.g. blocks.0.hook_resid_post, or hook_hidden of a toy model)",
        )
        if self.d_sae is None and self.expansion_factor is None:
            raise ValueError("sae.d_sae / sae.expansion_factor: give one of them")
        if self.expansion_factor is not None:
            _check(_pos_int(self.expansion_factor), "expansion_factor", "must be >= 1")
            d_sae = self.expansion_factor * self.d_in
            _check(
                self.d_sae in (None, d_sae),
                "expansion_factor",
                f"d_sae={self.d_sae} contradicts expansion_factor * d_in = {d_sae}",
            )
            object.__setattr__(self, "d_sae", d_sae)
        _check(_pos_int(self.d_sae), "d_sae", f"must be a positive integer, got {self.d_sae!r}")

        if arch in _SPARSITY_ARCHS:
            _check(
                self.l1_coefficient is not None and self.l1_coefficient > 0,
                "l1_coefficient",
                f"must be > 0 for {arch}, got {self.l1_coefficient!r}",
            )
        else:
            _check(
                self.l1_coefficient is None,
                "l1_coefficient",
                f"is not used by {arch} (set k instead)",
            )
        if arch in _K_ARCHS:
            _check(_pos_int(self.k), "k", f"must be a positive integer for {arch}, got {self.k!r}")
            _check(self.k <= self.d_sae, "k", f"k={self.k} exceeds d_sae={self.d_sae}")
        else:
            _check(self.k is None, "k", f"is not used by {arch} (set l1_coefficient instead)")

        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        betas = tuple(self.adam_betas)
        _check(
            len(betas) == 2 and all(0 <= b < 1 for b in betas),
            "adam_betas",
            f"must be two numbers in [0, 1), got {self.adam_betas!r}",
        )
        object.__setattr__(self, "adam_betas", betas)
        for name in ("lr_warmup_fraction", "lr_decay_fraction", "sparsity_warmup_fraction"):
            value = getattr(self, name)
            _check(0 <= value <= 1, name, f"must lie in [0, 1], got {value}")
        _check(
            self.lr_warmup_fraction + self.lr_decay_fraction <= 1,
            "lr_decay_fraction",
            "lr_warmup_fraction + lr_decay_fraction must not exceed 1",
        )
        _check(_pos_int(self.batch_size), "batch_size", f"must be >= 1, got {self.batch_size!r}")
        _check(
            _pos_int(self.total_tokens) and self.total_tokens >= self.batch_size,
            "total_tokens",
            f"must be >= batch_size ({self.batch_size}), got {self.total_tokens!r}",
        )
        _check(
            self.normalize_activations in NORMALIZATIONS,
            "normalize_activations",
            f"{self.normalize_activations!r} is not one of {NORMALIZATIONS}",
        )
        _check(
            self.decoder_norm in DECODER_NORMS,
            "decoder_norm",
            f"{self.decoder_norm!r} is not one of {DECODER_NORMS}",
        )
        _check(
            self.decoder_norm == "unit" or arch == "relu",
            "decoder_norm",
            f"'free' is only for relu (its L1 is weighted by decoder norms); {arch} needs 'unit'",
        )
        _check(
            self.dead_latents in DEAD_LATENTS,
            "dead_latents",
            f"{self.dead_latents!r} is not one of {DEAD_LATENTS}",
        )
        _check(
            self.dead_latents != "resample" or arch == "relu",
            "dead_latents",
            f"resample is for relu SAEs, not {arch}",
        )
        _check(
            self.dead_latents != "auxk" or arch in _K_ARCHS,
            "dead_latents",
            f"auxk is for topk/batchtopk SAEs, not {arch}",
        )
        _check(_pos_int(self.dead_after_tokens), "dead_after_tokens", "must be >= 1")
        if self.aux_k is not None:
            _check(_pos_int(self.aux_k), "aux_k", f"must be >= 1, got {self.aux_k!r}")
            _check(self.aux_k <= self.d_sae, "aux_k", f"aux_k={self.aux_k} exceeds d_sae")
        _check(self.aux_k_coefficient >= 0, "aux_k_coefficient", "must be >= 0")
        if self.resample_every_tokens is not None:
            _check(_pos_int(self.resample_every_tokens), "resample_every_tokens", "must be >= 1")
        if self.jumprelu_init_threshold is not None:
            _check(self.jumprelu_init_threshold >= 0, "jumprelu_init_threshold", "must be >= 0")
        elif arch == "jumprelu":
            object.__setattr__(self, "jumprelu_init_threshold", math.sqrt(self.l1_coefficient))
        _check(self.jumprelu_bandwidth > 0, "jumprelu_bandwidth", "must be > 0")
        _check(
            0 < self.batchtopk_threshold_decay <= 1,
            "batchtopk_threshold_decay",
            "must lie in (0, 1]",
        )
        _check(
            _pos_int(self.shuffle_buffer_tokens),
            "shuffle_buffer_tokens",
            f"must be >= 1, got {self.shuffle_buffer_tokens!r}",
        )
        _check(
            isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
            "checkpoint_every",
            "must be >= 0 (0: no checkpoints)",
        )
        _check(_pos_int(self.log_every), "log_every", "must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return strict_from_dict(cls, data, "sae")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    @property
    def dead_latent_method(self) -> str:
        """``dead_latents`` with ``auto`` resolved for this architecture."""
        if self.dead_latents != "auto":
            return self.dead_latents
        return {"relu": "resample", "topk": "auxk", "batchtopk": "auxk"}.get(
            self.architecture, "none"
        )

    @property
    def aux_k_resolved(self) -> int:
        return self.aux_k if self.aux_k is not None else max(1, min(self.d_in // 2, self.d_sae))

    @property
    def resample_every_resolved(self) -> int:
        return self.resample_every_tokens or max(1, self.total_tokens // 5)


def _pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check(ok: Any, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"sae.{key}: {message}")
