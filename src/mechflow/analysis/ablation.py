"""Head ablations in batched forward passes: one pass scores many (head, ablation) pairs.

Each input batch is replicated once per ablation along the batch axis (copy-major: rows
``c * batch + b``), and one ``hook_z`` hook per layer overwrites head h's output in the copies that
ablate head h of that layer. One forward pass then covers every head instead of one per head
(TransformerLens's patching helpers run one pass per index).

Zero ablation sets ``hook_z`` of the head to 0; mean ablation sets it to its mean over the
evaluation sequences at each position (computed by ``mean_head_outputs``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int

from mechflow.analysis.losses import token_batches
from mechflow.progress import Progress

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)

ABLATIONS = ("zero", "mean")


@dataclass(frozen=True)
class HeadAblation:
    kind: str  # "zero" or "mean"
    layer: int
    head: int

    def __post_init__(self):
        if self.kind not in ABLATIONS:
            raise ValueError(f"unknown ablation {self.kind!r}; expected one of {ABLATIONS}")


def all_head_ablations(n_layers: int, n_heads: int, kinds=ABLATIONS) -> list[HeadAblation]:
    return [
        HeadAblation(kind, layer, head)
        for kind in kinds
        for layer in range(n_layers)
        for head in range(n_heads)
    ]


def z_hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def repeated_half(half_len: int) -> slice:
    """Entries of ``per_token_loss`` that predict the repeated half of ``[BOS] + r + r``."""
    return slice(half_len, 2 * half_len)


@torch.inference_mode()
def mean_head_outputs(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "seq pos"],
    batch_size: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Float[torch.Tensor, "layer pos head_index d_head"]:
    """Mean of every layer's ``hook_z`` over the sequences, at each position."""
    names = [z_hook_name(layer) for layer in range(model.cfg.n_layers)]
    total = None
    bar = Progress(total=len(tokens), desc="mean z", unit="sequence", enabled=progress, logger=log)
    for batch in token_batches(tokens, batch_size, device):
        _, cache = model.run_with_cache(batch, names_filter=names, return_type=None)
        z = torch.stack([cache[name] for name in names])  # layer batch pos head_index d_head
        batch_total = z.sum(1, dtype=torch.float64)
        total = batch_total if total is None else total + batch_total
        bar.update(len(batch))
    bar.close()
    return (total / len(tokens)).to(model.cfg.dtype)


def _ablation_hook(
    zero: Float[torch.Tensor, "copy head_index"],
    mean: Float[torch.Tensor, "copy head_index"],
    mean_z: Float[torch.Tensor, "pos head_index d_head"] | None,
    n_copies: int,
):
    """A ``hook_z`` hook overwriting, in copy c, the heads flagged in row c of the masks."""

    def hook(z: Float[torch.Tensor, "batch pos head_index d_head"], hook):
        out = z.view(n_copies, -1, *z.shape[1:])  # copy batch pos head_index d_head
        out = out.masked_fill(zero[:, None, None, :, None], 0.0)
        if mean_z is not None:
            out = torch.where(mean[:, None, None, :, None], mean_z[None, None], out)
        return out.reshape(z.shape)

    return hook


def ablated_loss(
    model: HookedTransformer,
    batch: Int[torch.Tensor, "batch pos"],
    ablations: Sequence[HeadAblation],
    loss_positions: slice,
    mean_z: Float[torch.Tensor, "layer pos head_index d_head"] | None = None,
) -> Float[torch.Tensor, "copy batch"]:
    """Per-sequence mean loss over ``loss_positions`` with each ablation applied, in one pass."""
    n_copies = len(ablations)
    if n_copies == 0:
        raise ValueError("no ablations given")
    if any(a.kind == "mean" for a in ablations):
        if mean_z is None:
            raise ValueError("mean ablation needs mean_z (see mean_head_outputs)")
        if mean_z.shape[1] != batch.shape[1]:
            raise ValueError(
                f"mean_z covers {mean_z.shape[1]} positions, the batch has {batch.shape[1]}"
            )
    cfg = model.cfg
    device = batch.device
    zero = torch.zeros(cfg.n_layers, n_copies, cfg.n_heads, dtype=torch.bool, device=device)
    mean = torch.zeros_like(zero)
    for copy, ablation in enumerate(ablations):
        if not (0 <= ablation.layer < cfg.n_layers and 0 <= ablation.head < cfg.n_heads):
            raise ValueError(f"{ablation} is outside the model ({cfg.n_layers} x {cfg.n_heads})")
        mask = zero if ablation.kind == "zero" else mean
        mask[ablation.layer, copy, ablation.head] = True
    hooks = [
        (
            z_hook_name(layer),
            _ablation_hook(
                zero[layer],
                mean[layer],
                None if mean_z is None else mean_z[layer].to(device),
                n_copies,
            ),
        )
        for layer in range(cfg.n_layers)
        if zero[layer].any() or mean[layer].any()
    ]
    tokens = batch.repeat(n_copies, 1)  # (copy batch) pos
    loss = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
    return loss[:, loss_positions].mean(-1).view(n_copies, batch.shape[0])


@torch.inference_mode()
def head_ablation_losses(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "seq pos"],
    half_len: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    ablations_per_pass: int | None = None,
    progress: bool = True,
) -> tuple[float, dict[HeadAblation, float]]:
    """Clean loss and loss with each head zero- and mean-ablated, on the repeated half.

    ``batch_size`` sequences are replicated ``ablations_per_pass`` times per forward pass (all
    2 * n_layers * n_heads ablations when None): memory grows with their product.
    """
    positions = repeated_half(half_len)
    mean_z = mean_head_outputs(model, tokens, batch_size, device, progress)
    ablations = all_head_ablations(model.cfg.n_layers, model.cfg.n_heads)
    per_pass = ablations_per_pass or len(ablations)
    chunks = [ablations[i : i + per_pass] for i in range(0, len(ablations), per_pass)]
    clean_total = 0.0
    totals = torch.zeros(len(ablations), dtype=torch.float64)
    bar = Progress(
        total=len(tokens), desc="head ablations", unit="sequence", enabled=progress, logger=log
    )
    for batch in token_batches(tokens, batch_size, device):
        clean = model(batch, return_type="loss", loss_per_token=True)[:, positions].mean(-1)
        clean_total += clean.sum(dtype=torch.float64).item()
        start = 0
        for chunk in chunks:
            loss = ablated_loss(model, batch, chunk, positions, mean_z)  # copy batch
            totals[start : start + len(chunk)] += loss.sum(1, dtype=torch.float64).cpu()
            start += len(chunk)
        bar.update(len(batch))
    bar.close()
    n = len(tokens)
    return clean_total / n, {a: float(t) / n for a, t in zip(ablations, totals, strict=True)}
