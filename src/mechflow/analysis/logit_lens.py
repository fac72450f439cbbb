"""The logit lens (nostalgebraist 2020): what the model would predict if it stopped at layer l.

The residual stream at every layer boundary is passed through the model's own final norm and
unembedding, as TransformerLens's ``cache.accumulated_resid(apply_ln=True)`` does: ``ln_final`` is
applied afresh to each stream (its own mean and scale), not with the final layer's cached scale.
Boundary ``layer`` l reads ``blocks.{l}.hook_resid_pre`` (l = 0 is the embeddings) and l =
n_layers reads ``blocks.{n_layers-1}.hook_resid_post``, whose lens is the model's own output.

Metrics average over the positions that have a next token (0..pos-2 predicting 1..pos-1). Only
the final distribution and one layer's log-probs are held at a time, since a batch of 16 x 256
tokens over a 50257-token vocabulary is already 0.8 GB per layer in float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from mechflow.analysis.losses import token_batches

if TYPE_CHECKING:
    from transformer_lens import ActivationCache, HookedTransformer

METRICS = ("loss", "kl_to_final", "top1_agreement", "top1_accuracy")


def resid_hook_names(n_layers: int) -> list[str]:
    """The residual stream read at each boundary 0..n_layers."""
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [
        f"blocks.{n_layers - 1}.hook_resid_post"
    ]


def lens_logits(
    model: HookedTransformer, resid: Float[torch.Tensor, "... d_model"]
) -> Float[torch.Tensor, "... d_vocab"]:
    """Final norm (recomputed on ``resid``), unembedding and logit soft-cap, as the model's head."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    logits = model.unembed(resid)
    cap = model.cfg.output_logits_soft_cap
    return cap * torch.tanh(logits / cap) if cap is not None and cap > 0 else logits


def lens_log_probs(
    model: HookedTransformer, resid: Float[torch.Tensor, "... d_model"]
) -> Float[torch.Tensor, "... d_vocab"]:
    return lens_logits(model, resid).log_softmax(-1)


def layer_log_probs(
    model: HookedTransformer, cache: ActivationCache
) -> Float[torch.Tensor, "layer batch pos d_vocab"]:
    """Every boundary's lens log-probs at once: for small inputs and tests (memory grows by layer)."""
    names = resid_hook_names(model.cfg.n_layers)
    return torch.stack([lens_log_probs(model, cache[name]) for name in names])


def lens_metric_sums(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "layer metric"]:
    """Per-boundary sums over predicted positions of ``METRICS`` (float64), one layer at a time."""
    if tokens.shape[1] < 2:
        raise ValueError(
            f"need at least 2 positions to predict a next token, got {tokens.shape[1]}"
        )
    names = resid_hook_names(model.cfg.n_layers)
    _, cache = model.run_with_cache(tokens, names_filter=names, return_type=None)
    targets = tokens[:, 1:, None]  # batch pos-1 1
    final = lens_log_probs(model, cache[names[-1]][:, :-1])  # batch pos-1 d_vocab
    final_top1 = final.argmax(-1)
    sums = []
    for name in names:
        lens = lens_log_probs(model, cache[name][:, :-1])  # batch pos-1 d_vocab
        top1 = lens.argmax(-1)
        per_token = torch.stack(
            [
                -lens.gather(-1, targets)[..., 0],
                F.kl_div(lens, final, log_target=True, reduction="none").sum(-1),  # KL(final||lens)
                (top1 == final_top1).to(lens.dtype),
                (top1 == targets[..., 0]).to(lens.dtype),
            ]
        )  # metric batch pos-1
        sums.append(per_token.sum(dim=(1, 2), dtype=torch.float64))
        del lens
    return torch.stack(sums).cpu()


@torch.inference_mode()
def logit_lens_table(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "seq pos"] | Int[torch.Tensor, "seq pos"],
    batch_size: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """One row per layer boundary: ``layer``, ``hook`` and the mean of each of ``METRICS``.

    ``loss`` is the lens's next-token cross-entropy (nats), ``kl_to_final`` is KL(model || lens)
    in nats, ``top1_agreement`` the share of positions where the lens's argmax is the model's and
    ``top1_accuracy`` where it is the true next token.
    """
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.cpu().numpy()
    total, count = None, 0
    for batch in token_batches(tokens, batch_size, device, progress, desc="logit lens"):
        sums = lens_metric_sums(model, batch)
        total = sums if total is None else total + sums
        count += batch.shape[0] * (batch.shape[1] - 1)
    if total is None:
        raise ValueError("no token sequences were given")
    names = resid_hook_names(model.cfg.n_layers)
    table = pd.DataFrame((total / count).numpy(), columns=list(METRICS))
    table.insert(0, "hook", names)
    table.insert(0, "layer", np.arange(len(names)))
    return table
