"""Sparse autoencoders: ReLU (Bricken et al. 2023), TopK, BatchTopK and JumpReLU.

``mechflow.saes.config`` imports no torch (the workflow validates configs with it); the rest
is imported from its modules: ``training`` (train from an activation store or a tensor),
``evaluate`` (metrics), ``saelens_format`` (save/load in SAELens's layout).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechflow.saes.config import ARCHITECTURES, SAEConfig

if TYPE_CHECKING:
    from mechflow.saes.base import SparseAutoencoder

__all__ = ["ARCHITECTURES", "SAEConfig", "build_sae"]


def build_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE of ``cfg.architecture``; the same seed gives the same weights."""
    common = {"seed": cfg.seed}
    aux = {}
    if cfg.dead_latent_method == "auxk":
        aux = {"aux_k": cfg.aux_k_resolved, "aux_k_coefficient": cfg.aux_k_coefficient}
    if cfg.architecture == "relu":
        from mechflow.saes.relu import ReluSAE

        return ReluSAE(cfg.d_in, cfg.d_sae, weighted_l1=cfg.decoder_norm == "free", **common)
    if cfg.architecture == "topk":
        from mechflow.saes.topk import TopKSAE

        return TopKSAE(cfg.d_in, cfg.d_sae, k=cfg.k, **aux, **common)
    if cfg.architecture == "batchtopk":
        from mechflow.saes.batch_topk import BatchTopKSAE

        return BatchTopKSAE(
            cfg.d_in, cfg.d_sae, k=cfg.k, threshold_decay=cfg.batchtopk_threshold_decay,
            **aux, **common,
        )  # fmt: skip
    if cfg.architecture == "jumprelu":
        from mechflow.saes.jumprelu import JumpReLUSAE

        return JumpReLUSAE(
            cfg.d_in, cfg.d_sae, init_threshold=cfg.jumprelu_init_threshold,
            bandwidth=cfg.jumprelu_bandwidth, **common,
        )  # fmt: skip
    raise ValueError(f"unknown SAE architecture {cfg.architecture!r}")
