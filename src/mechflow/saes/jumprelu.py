"""JumpReLU SAE (Rajamanoharan et al. 2024): ``z * H(z - theta)`` with a learned threshold per latent.

The step function H has zero gradient almost everywhere, so the threshold learns through
straight-through pseudo-gradients: the derivative of H(z - theta) with respect to theta is
replaced by ``-(1/eps) K((z - theta)/eps)`` with K the rectangle kernel of width 1 (eps is the
bandwidth). The sparsity penalty is the L0 norm, sum_i H(z_i - theta_i), through the same
estimator; as in the paper it reaches theta only, not the encoder. The threshold is a plain
parameter clamped at 0 after each step (a log parameterisation barely moves a small threshold
under Adam).

Where the threshold starts matters in short runs. The expected loss gradient with respect to
theta_i vanishes where the squared error latent i removes by firing at its threshold equals the
coefficient lambda (the paper's section 4); for a unit decoder row that explains its own
activation that error is theta_i^2, so theta_i settles near sqrt(lambda) (in the units of the
normalised inputs). Adam moves theta by at most about ``lr`` per step, though: from the paper's
start of 0.001, a run of a few hundred steps at lr 3e-3 lifts theta to about 0.5, short of
sqrt(lambda) = 1 or 3.2 for lambda = 1 or 10, so such runs end at the same L0 whatever their
coefficient. The threshold therefore starts at sqrt(lambda) by default and training corrects
it; the paper's 0.001 suits its runs of 100k+ steps, where the climb is cheap.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import nn

from mechflow.saes.base import SparseAutoencoder, TrainStep


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """``z * H(z - theta)``; d/dz = H(z - theta), d/dtheta = -(theta/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(z, theta, bandwidth):
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, theta, bandwidth = inputs
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * (z > theta).to(grad.dtype)
        grad_theta = -(theta / eps) * (_rectangle((z - theta) / eps) * grad).sum(0)
        return grad_z, grad_theta, None


class StepFunction(torch.autograd.Function):
    """``H(z - theta)``; no gradient to z, d/dtheta = -(1/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(z, theta, bandwidth):
        return (z > theta).to(z.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, theta, bandwidth = inputs
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1.0 / eps) * (_rectangle((z - theta) / eps) * grad).sum(0)
        return None, grad_theta, None


class JumpReLUSAE(SparseAutoencoder):
    architecture = "jumprelu"
    saelens_architecture = "jumprelu"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        init_threshold: float = 0.001,
        bandwidth: float = 0.001,
        seed: int = 0,
    ):
        super().__init__(d_in, d_sae, seed=seed)
        self.bandwidth = bandwidth
        self.threshold = nn.Parameter(torch.full((d_sae,), float(init_threshold)))

    def activate(
        self, pre: Float[torch.Tensor, "batch d_sae"]
    ) -> Float[torch.Tensor, "batch d_sae"]:
        return pre * (pre > self.threshold.clamp_min(0))

    def training_loss(
        self,
        x: Float[torch.Tensor, "batch d_in"],
        *,
        sparsity_coefficient: float,
        dead_mask: Bool[torch.Tensor, " d_sae"] | None = None,
    ) -> TrainStep:
        pre = self.pre_acts(x)  # batch d_sae
        acts = JumpReLUFunction.apply(pre, self.threshold, self.bandwidth)
        x_hat = self.decode(acts)
        recon = self.reconstruction_loss(x_hat, x)
        l0 = StepFunction.apply(pre, self.threshold, self.bandwidth).sum() / x.shape[0]
        loss = recon + sparsity_coefficient * l0
        fired = acts.detach().sum(0) != 0
        return TrainStep(
            loss, {"mse": recon.detach(), "sparsity_loss": l0.detach()}, acts, x_hat, fired
        )

    @torch.no_grad()
    def post_step_(self, unit_decoder: bool) -> None:
        super().post_step_(unit_decoder)
        self.threshold.clamp_(min=0)

    def inference_state(self) -> dict[str, torch.Tensor]:
        state = super().inference_state()
        state["threshold"] = self.threshold.detach().clamp_min(0)
        return state
