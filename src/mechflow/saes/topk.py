"""TopK SAE (Gao et al. 2024): the k largest pre-activations of each token, through a ReLU.

Sparsity is set by ``k``, not a penalty, so the loss is the reconstruction error plus the AuxK
term: the dead latents' top ``aux_k`` pre-activations must reconstruct the main model's residual
error, which gives dead latents a gradient again.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from mechflow.saes.base import SparseAutoencoder, TrainStep


def topk_acts(
    pre: Float[torch.Tensor, "batch d_sae"], k: int
) -> Float[torch.Tensor, "batch d_sae"]:
    """Keep each row's k largest entries (ReLU'd, as SAELens does), zero the rest."""
    values, indices = torch.topk(pre, k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))


def auxk_loss(
    sae: SparseAutoencoder,
    pre: Float[torch.Tensor, "batch d_sae"],
    x: Float[torch.Tensor, "batch d_in"],
    x_hat: Float[torch.Tensor, "batch d_in"],
    dead_mask: Bool[torch.Tensor, " d_sae"] | None,
    aux_k: int,
) -> Float[torch.Tensor, ""]:
    """||e - e_hat||^2 with e = x - x_hat (a fixed target) and e_hat decoded from the top
    ``aux_k`` dead latents (no decoder bias); zero when no latent is dead."""
    if dead_mask is None or not bool(dead_mask.any()):
        return pre.new_zeros(())
    n_dead = int(dead_mask.sum())
    masked = pre.masked_fill(~dead_mask, float("-inf"))
    acts = topk_acts(masked, min(aux_k, n_dead))
    e_hat = acts @ sae.W_dec  # batch d_in
    err = (x - x_hat).detach()
    return torch.nn.functional.mse_loss(e_hat, err, reduction="sum") / x.shape[0]


class TopKSAE(SparseAutoencoder):
    architecture = "topk"
    saelens_architecture = "topk"

    def __init__(
        self, d_in: int, d_sae: int, *, k: int, aux_k: int = 1, aux_k_coefficient: float = 0.0,
        seed: int = 0,
    ):  # fmt: skip
        super().__init__(d_in, d_sae, seed=seed)
        if not 1 <= k <= d_sae:
            raise ValueError(f"k={k} must lie in [1, d_sae={d_sae}]")
        self.k, self.aux_k, self.aux_k_coefficient = k, aux_k, aux_k_coefficient

    def activate(
        self, pre: Float[torch.Tensor, "batch d_sae"]
    ) -> Float[torch.Tensor, "batch d_sae"]:
        return topk_acts(pre, self.k)

    def training_loss(
        self,
        x: Float[torch.Tensor, "batch d_in"],
        *,
        sparsity_coefficient: float = 0.0,
        dead_mask: Bool[torch.Tensor, " d_sae"] | None = None,
    ) -> TrainStep:
        pre = self.pre_acts(x)
        acts = self.activate(pre)
        return self._loss_from(x, pre, acts, dead_mask)

    def _loss_from(self, x, pre, acts, dead_mask) -> TrainStep:
        x_hat = self.decode(acts)
        recon = self.reconstruction_loss(x_hat, x)
        loss = recon
        parts = {"mse": recon.detach()}
        if self.aux_k_coefficient > 0:
            aux = auxk_loss(self, pre, x, x_hat, dead_mask, self.aux_k)
            loss = loss + self.aux_k_coefficient * aux
            parts["aux_loss"] = aux.detach()
        fired = acts.detach().sum(0) > 0
        return TrainStep(loss, parts, acts, x_hat, fired)

    def extra_config(self) -> dict:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}
