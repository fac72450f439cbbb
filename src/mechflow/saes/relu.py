"""ReLU SAE with an L1 penalty (Bricken et al. 2023), and dead-latent resampling.

Two ways to keep the L1 penalty from being gamed by shrinking activations and growing decoder
rows: ``unit`` decoder rows (renormalised after every step; Bricken et al.) or ``free`` rows
with the penalty ``sum_i f_i ||W_dec[i]||`` (Anthropic's April 2024 update).

The training loss is one autograd function with a hand-written backward. On CPU the step is
five ``batch x d_in x d_sae`` matmuls plus memory-bound passes over ``batch x d_sae``; the
function keeps both to the minimum: the penalty comes from per-latent column sums of the
activations (they are >= 0), its gradient rides in the bias of the ``grad_f`` matmul, the ReLU
mask is applied in one pass, and ``b_dec``'s gradient through the encoder is a matrix-vector
product. Autograd on the textbook expression does six matmuls and about twice the passes.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from mechflow.saes.base import SparseAutoencoder, TrainStep


class _ReluTrainingLoss(torch.autograd.Function):
    """loss = ||x_hat - x||^2 / batch + c * sum_i col_i * w_i / batch, with col = acts.sum(0)
    and w_i = ||W_dec[i]|| (weighted) or 1. Also returns (not differentiable) the terms, the
    activations and the column sums."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, coefficient: float, weighted: bool):
        n = x.shape[0]
        bias = torch.addmv(b_enc, W_enc.t(), b_dec, alpha=-1)  # b_enc - b_dec @ W_enc
        acts = torch.addmm(bias, x, W_enc).clamp_min_(0)  # batch d_sae
        err = torch.addmm(b_dec, acts, W_dec).sub_(x)  # batch d_in: x_hat - x
        col = acts.sum(0)  # d_sae
        norms = W_dec.norm(dim=1) if weighted else None
        mse = err.pow(2).sum() / n
        sparsity = (col @ norms if weighted else col.sum()) / n
        loss = mse + coefficient * sparsity
        ctx.save_for_backward(x, W_enc, W_dec, b_dec, acts, err, col, norms)
        ctx.coefficient = coefficient
        ctx.mark_non_differentiable(mse, sparsity, acts, col)
        return loss, mse, sparsity, acts, col

    @staticmethod
    def backward(ctx, grad_loss, *_):
        x, W_enc, W_dec, b_dec, acts, err, col, norms = ctx.saved_tensors
        n = x.shape[0]
        c = ctx.coefficient * grad_loss / n
        grad_err = err * (2 * grad_loss / n)  # batch d_in
        grad_W_dec = acts.t() @ grad_err  # d_sae d_in
        if norms is not None:
            l1_grad = c * norms  # d_sae
            grad_W_dec += (c * col / norms.clamp_min(1e-12)).unsqueeze(1) * W_dec
        else:
            l1_grad = c.expand(acts.shape[1])
        grad_acts = torch.addmm(l1_grad, grad_err, W_dec.t())  # batch d_sae
        grad_pre = torch.ops.aten.threshold_backward(grad_acts, acts, 0)  # 0 where acts == 0
        del grad_acts
        grad_b_enc = grad_pre.sum(0)  # d_sae
        grad_W_enc = torch.addr(x.t() @ grad_pre, b_dec, grad_b_enc, alpha=-1)
        grad_b_dec = grad_err.sum(0) - W_enc @ grad_b_enc
        return None, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, None, None


class ReluSAE(SparseAutoencoder):
    architecture = "relu"
    saelens_architecture = "standard"

    def __init__(self, d_in: int, d_sae: int, *, seed: int = 0, weighted_l1: bool = False):
        # Free decoder rows start short (0.1) so the L1 term does not dominate at first.
        super().__init__(d_in, d_sae, seed=seed, decoder_init_norm=0.1 if weighted_l1 else 1.0)
        self.weighted_l1 = weighted_l1

    def activate(
        self, pre: Float[torch.Tensor, "batch d_sae"]
    ) -> Float[torch.Tensor, "batch d_sae"]:
        return torch.relu(pre)

    def training_loss(
        self,
        x: Float[torch.Tensor, "batch d_in"],
        *,
        sparsity_coefficient: float,
        dead_mask: Bool[torch.Tensor, " d_sae"] | None = None,
    ) -> TrainStep:
        if not self.apply_b_dec_to_input:
            raise NotImplementedError("training assumes apply_b_dec_to_input")
        loss, mse, sparsity, acts, col = _ReluTrainingLoss.apply(
            x, self.W_enc, self.b_enc, self.W_dec, self.b_dec,
            float(sparsity_coefficient), self.weighted_l1,
        )  # fmt: skip
        parts = {"mse": mse, "sparsity_loss": sparsity}
        return TrainStep(loss, parts, acts, None, col > 0)


@torch.no_grad()
def resample_dead_latents_(
    sae: SparseAutoencoder,
    x: Float[torch.Tensor, "batch d_in"],
    dead_mask: Bool[torch.Tensor, " d_sae"],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """Bricken et al.'s resampling, on one batch: point each dead latent at an input.

    Inputs are drawn with probability proportional to their squared reconstruction error; the
    dead latent's decoder row becomes the (centred) input direction, its encoder column the
    same direction at 0.2 times the mean encoder norm of the live latents, its bias 0, and its
    Adam moments are reset. Returns the number of latents resampled.
    """
    dead = dead_mask.nonzero().squeeze(1)
    if dead.numel() == 0:
        return 0
    x_hat = sae.decode(sae.encode(x))
    err = (x - x_hat).pow(2).sum(1)  # batch
    if not torch.isfinite(err).all() or err.sum() <= 0:
        return 0
    picks = torch.multinomial(err.cpu(), dead.numel(), replacement=True, generator=generator)
    directions = x[picks.to(x.device)] - sae.b_dec  # n_dead d_in
    directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead_mask
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else x.new_tensor(1.0)
    dec_norm = sae.W_dec[alive].norm(dim=1).mean() if alive.any() else x.new_tensor(1.0)
    sae.W_dec[dead] = directions * dec_norm
    sae.W_enc[:, dead] = directions.t() * (0.2 * enc_norm)
    sae.b_enc[dead] = 0.0
    for param, index in (
        (sae.W_dec, (dead,)),
        (sae.W_enc, (slice(None), dead)),
        (sae.b_enc, (dead,)),
    ):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0
    return int(dead.numel())
