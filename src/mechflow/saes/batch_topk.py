"""BatchTopK SAE (Bussmann et al. 2024): the k * batch largest activations over the whole batch.

Tokens share the budget, so a hard token can use more latents than an easy one while the
average stays k. A batch-level choice cannot be made for one token at inference, so training
keeps an exponential moving average of the smallest activation the batch kept; inference is a
JumpReLU with that threshold, and the SAE is saved as a SAELens ``jumprelu``.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from mechflow.saes.base import TrainStep
from mechflow.saes.topk import TopKSAE


def batch_topk_acts(
    pre: Float[torch.Tensor, "batch d_sae"], k: int
) -> tuple[Float[torch.Tensor, "batch d_sae"], Float[torch.Tensor, ""]]:
    """Keep the ``k * batch`` largest ReLU'd activations of the whole batch.

    Also returns the smallest positive value kept (0 when none is), for the threshold.
    """
    flat = pre.flatten()
    n_keep = min(k * pre.shape[0], flat.numel())
    values, indices = torch.topk(flat, n_keep, sorted=False)
    values = torch.relu(values)
    smallest = values.detach().masked_fill(values.detach() <= 0, float("inf")).min()
    acts = torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre)
    return acts, torch.where(torch.isfinite(smallest), smallest, torch.zeros_like(smallest))


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"
    saelens_architecture = "jumprelu"

    def __init__(
        self, d_in: int, d_sae: int, *, k: int, aux_k: int = 1, aux_k_coefficient: float = 0.0,
        threshold_decay: float = 0.01, seed: int = 0,
    ):  # fmt: skip
        super().__init__(
            d_in, d_sae, k=k, aux_k=aux_k, aux_k_coefficient=aux_k_coefficient, seed=seed
        )
        self.threshold_decay = threshold_decay
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    def activate(
        self, pre: Float[torch.Tensor, "batch d_sae"]
    ) -> Float[torch.Tensor, "batch d_sae"]:
        """Inference: a JumpReLU at the estimated threshold (token by token)."""
        return pre * (pre > self.threshold.clamp_min(0))

    def training_loss(
        self,
        x: Float[torch.Tensor, "batch d_in"],
        *,
        sparsity_coefficient: float = 0.0,
        dead_mask: Bool[torch.Tensor, " d_sae"] | None = None,
    ) -> TrainStep:
        pre = self.pre_acts(x)
        acts, smallest = batch_topk_acts(pre, self.k)
        self._update_threshold(smallest)
        return self._loss_from(x, pre, acts, dead_mask)

    @torch.no_grad()
    def _update_threshold(self, smallest: Float[torch.Tensor, ""]) -> None:
        if float(smallest) <= 0:  # nothing kept: no information about the threshold
            return
        if int(self.threshold_updates) == 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, self.threshold_decay)
        self.threshold_updates += 1

    def extra_config(self) -> dict:
        return {}

    def inference_state(self) -> dict[str, torch.Tensor]:
        state = super().inference_state()
        state["threshold"] = self.threshold.clamp_min(0).expand(self.d_sae).clone()
        return state
