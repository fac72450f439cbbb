"""How good is an SAE: sparsity, reconstruction, latent health, downstream loss, ground truth.

- On activations: L0 (active latents per token), MSE, fraction of variance unexplained
  (sum ||x - x_hat||^2 / sum ||x - mean x||^2), dead latents (never fired on the evaluation
  tokens) and dense latents (firing on more than ``dense_threshold`` of them).
- In the model: cross-entropy loss with the SAE's reconstruction spliced in at its hook, versus
  the clean loss and the loss with the activation zero- or mean-ablated;
  recovered = (CE_ablated - CE_sae) / (CE_ablated - CE_clean): 1 is a perfect SAE, 0 is no
  better than ablation. Hooks come from ``model.hooks(...)``, removed on exit.
- On toy data: the best cosine similarity of each true feature direction with any decoder row,
  and the fraction found (>= 0.9).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int

from mechflow.saes.base import SparseAutoencoder

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from mechflow.store.reader import ActivationStore


@torch.no_grad()
def activation_metrics(
    sae: SparseAutoencoder,
    batches: Iterable[Float[torch.Tensor, "tokens d_in"]],
    *,
    dense_threshold: float = 0.1,
) -> dict[str, Any]:
    """Streamed over ``batches``; float64 accumulators.

    Also returns ``firing_frequency`` (per latent) and ``mean_activation`` (for mean ablation).
    """
    device = sae.W_dec.device
    n = 0
    sq_err = total = l0 = 0.0
    x_sum = x_sq = None
    fires = torch.zeros(sae.d_sae, dtype=torch.float64, device=device)
    for x in batches:
        x = x.to(device, torch.float32)
        x_hat, acts = sae(x)
        active = acts != 0
        n += x.shape[0]
        sq_err += float((x_hat - x).double().pow(2).sum())
        l0 += float(active.sum())
        fires += active.sum(0, dtype=torch.float64)
        xd = x.double()
        x_sum = xd.sum(0) if x_sum is None else x_sum + xd.sum(0)
        x_sq = float(xd.pow(2).sum()) + (x_sq or 0.0)
    if n == 0:
        raise ValueError("no activations to evaluate")
    total = x_sq - float(x_sum.pow(2).sum()) / n  # sum ||x - mean||^2
    freq = fires / n
    n_dead = int((fires == 0).sum())
    n_dense = int((freq > dense_threshold).sum())
    fvu = sq_err / total if total > 0 else float("nan")
    return {
        "n_tokens": n,
        "l0": l0 / n,
        "mse": sq_err / (n * sae.d_in),
        "mse_per_token": sq_err / n,
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "n_dead": n_dead,
        "frac_dead": n_dead / sae.d_sae,
        "n_dense": n_dense,
        "frac_dense": n_dense / sae.d_sae,
        "firing_frequency": freq.cpu(),
        "mean_activation": (x_sum / n).float().cpu(),
    }


def store_token_batches(
    store: ActivationStore,
    hook: str,
    *,
    skip_bos: bool = True,
    max_sequences: int | None = None,
    rows_per_batch: int | None = None,
) -> Iterator[Float[torch.Tensor, "tokens d_in"]]:
    """Consecutive sequences of a hook as ``(tokens, d_in)`` (trailing axes flattened)."""
    n_seq = store.n_sequences if max_sequences is None else min(max_sequences, store.n_sequences)
    array = store.array(hook)
    rows = rows_per_batch or array.chunks[0]
    for start in range(0, n_seq, rows):
        block = array[start : min(start + rows, n_seq)]  # seq pos ...
        if skip_bos:
            block = block[:, 1:]
        flat = np.ascontiguousarray(block).reshape(-1, int(np.prod(block.shape[2:])))
        yield torch.from_numpy(flat).to(torch.float32)


def mean_activation(batches: Iterable[Float[torch.Tensor, "tokens d_in"]]) -> torch.Tensor:
    total, n = None, 0
    for x in batches:
        s = x.double().sum(0)
        total = s if total is None else total + s
        n += x.shape[0]
    if total is None:
        raise ValueError("no activations to average")
    return (total / n).float()


def _mean_loss(model: HookedTransformer, tokens, batch_size: int, device, hooks=()) -> float:
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        batch = torch.as_tensor(np.asarray(tokens[start : start + batch_size], dtype=np.int64))
        batch = batch.to(device)
        with model.hooks(fwd_hooks=list(hooks)):
            loss = model(batch, return_type="loss", loss_per_token=True)  # batch pos-1
        total += float(loss.double().sum())
        count += loss.numel()
    return total / count


@torch.no_grad()
def ce_loss_recovered(
    model: HookedTransformer,
    sae: SparseAutoencoder,
    hook_name: str,
    tokens: Int[np.ndarray, "seq pos"],
    *,
    batch_size: int = 32,
    keep_bos: bool = True,
    mean_act: Float[torch.Tensor, " d_in"] | None = None,
) -> dict[str, float]:
    """Next-token loss clean, with the SAE spliced in, and zero-/mean-ablated at ``hook_name``.

    ``keep_bos`` leaves position 0 untouched in every variant (for SAEs trained without BOS,
    whose huge activations they never saw). The mean ablation needs ``mean_act``.
    """
    if hook_name not in model.hook_dict:
        raise ValueError(f"the model has no hook {hook_name!r}")
    device = next(model.parameters()).device
    sae = sae.to(device)
    first = 1 if keep_bos else 0

    def replace(make):
        def hook(act, hook):  # batch pos ...
            flat = act.reshape(*act.shape[:2], -1)  # batch pos d_in
            new = flat.clone()
            new[:, first:] = make(flat[:, first:])
            return new.reshape(act.shape)

        return [(hook_name, hook)]

    def reconstruct(flat):
        return sae(flat.float()).reconstruction.to(flat.dtype)

    out = {"ce_clean": _mean_loss(model, tokens, batch_size, device)}
    out["ce_sae"] = _mean_loss(model, tokens, batch_size, device, replace(reconstruct))
    out["ce_zero_ablated"] = _mean_loss(
        model, tokens, batch_size, device, replace(torch.zeros_like)
    )
    out["ce_recovered_zero"] = _recovered(out["ce_zero_ablated"], out["ce_sae"], out["ce_clean"])
    if mean_act is not None:
        mean = mean_act.to(device)
        out["ce_mean_ablated"] = _mean_loss(
            model, tokens, batch_size, device, replace(lambda f: mean.to(f.dtype).expand_as(f))
        )
        out["ce_recovered_mean"] = _recovered(
            out["ce_mean_ablated"], out["ce_sae"], out["ce_clean"]
        )
    return out


def _recovered(ablated: float, sae: float, clean: float) -> float:
    gap = ablated - clean
    return (ablated - sae) / gap if gap != 0 else float("nan")


@torch.no_grad()
def feature_recovery(
    W_dec: Float[torch.Tensor, "d_sae d_in"],
    true_features: Float[torch.Tensor, "n_features d_in"],
    threshold: float = 0.9,
) -> dict[str, Any]:
    """Max cosine similarity of each true direction with any decoder row (and that row); the
    mean of those (MMCS) and the fraction at or above ``threshold``."""
    dec = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    true = true_features / true_features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best, best_latent = (true @ dec.t()).max(dim=1)  # n_features
    return {
        "mmcs": float(best.mean()),
        "frac_recovered": float((best >= threshold).float().mean()),
        "max_cosine": best.cpu(),
        "best_latent": best_latent.cpu(),
    }
