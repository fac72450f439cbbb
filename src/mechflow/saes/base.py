"""What every SAE architecture shares: parameters, encoder/decoder, decoder-row normalisation.

Parameters follow SAELens's names and shapes (``W_enc (d_in, d_sae)``, ``b_enc``, ``W_dec
(d_sae, d_in)``, ``b_dec``), and the encoder subtracts ``b_dec`` from its input
(``apply_b_dec_to_input``), so a saved SAE reads the same in SAELens.

The encoder is one autograd function: ``(x - b_dec) @ W_enc + b_enc`` computed as ``x @ W_enc +
(b_enc - b_dec @ W_enc)``, and its backward gets ``b_dec``'s gradient as ``-W_enc @ g.sum(0)``, a
matrix-vector product. Autograd on the plain expression builds the full ``(batch, d_in)``
gradient of ``x - b_dec`` first: one of the step's seven ``batch x d_in x d_sae`` matmuls.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import nn


class SAEOutput(NamedTuple):
    reconstruction: Float[torch.Tensor, "... d_in"]
    feature_acts: Float[torch.Tensor, "... d_sae"]


class TrainStep(NamedTuple):
    """One training forward pass: the loss to minimise and what the trainer tracks."""

    loss: Float[torch.Tensor, ""]
    parts: dict[str, torch.Tensor]  # detached scalar terms of the loss, for the log
    feature_acts: Float[torch.Tensor, "batch d_sae"]
    reconstruction: Float[torch.Tensor, "batch d_in"] | None  # when the loss needs it anyway
    fired: Bool[torch.Tensor, " d_sae"]  # latents active on any token of the batch


class _Encoder(torch.autograd.Function):
    """``(x - b_dec) @ W_enc + b_enc`` with a backward that never forms the input's gradient."""

    @staticmethod
    def forward(x, W_enc, b_enc, b_dec):
        bias = torch.addmv(b_enc, W_enc.t(), b_dec, alpha=-1)  # d_sae
        return torch.addmm(bias, x, W_enc)  # batch d_sae

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W_enc, _, b_dec = inputs
        ctx.save_for_backward(x, W_enc, b_dec)

    @staticmethod
    def backward(ctx, grad):
        x, W_enc, b_dec = ctx.saved_tensors
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        col = grad.sum(0)  # d_sae
        if ctx.needs_input_grad[0]:
            grad_x = grad @ W_enc.t()
        if ctx.needs_input_grad[1]:
            # (x - b_dec)^T g = x^T g - b_dec outer g.sum(0)
            grad_W = torch.addr(x.t() @ grad, b_dec, col, alpha=-1)
        if ctx.needs_input_grad[2]:
            grad_b_enc = col
        if ctx.needs_input_grad[3]:
            grad_b_dec = -(W_enc @ col)
        return grad_x, grad_W, grad_b_enc, grad_b_dec


class SparseAutoencoder(nn.Module):
    """Base class; subclasses define the activation and the training loss."""

    architecture: ClassVar[str]
    saelens_architecture: ClassVar[str]

    def __init__(self, d_in: int, d_sae: int, *, seed: int = 0, decoder_init_norm: float = 1.0):
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        gen = torch.Generator().manual_seed(seed)
        # Random directions, tied init (W_enc = W_dec^T): Gao et al. find it keeps latents alive.
        W_dec = torch.randn(d_sae, d_in, generator=gen)  # d_sae d_in
        W_dec *= decoder_init_norm / W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.t().clone())  # d_in d_sae
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # False only for SAEs loaded from elsewhere (e.g. Gemma Scope); ours always subtract it.
        self.apply_b_dec_to_input = True

    # --- inference -------------------------------------------------------------------------
    def pre_acts(self, x: Float[torch.Tensor, "batch d_in"]) -> Float[torch.Tensor, "batch d_sae"]:
        if not self.apply_b_dec_to_input:
            return torch.addmm(self.b_enc, x, self.W_enc)
        return _Encoder.apply(x, self.W_enc, self.b_enc, self.b_dec)

    def activate(
        self, pre: Float[torch.Tensor, "batch d_sae"]
    ) -> Float[torch.Tensor, "batch d_sae"]:
        raise NotImplementedError

    def encode(self, x: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        lead = x.shape[:-1]
        acts = self.activate(self.pre_acts(x.reshape(-1, self.d_in)))
        return acts.reshape(*lead, self.d_sae)

    def decode(self, acts: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... d_in"]:
        lead = acts.shape[:-1]
        out = torch.addmm(self.b_dec, acts.reshape(-1, self.d_sae), self.W_dec)
        return out.reshape(*lead, self.d_in)

    def forward(self, x: Float[torch.Tensor, "... d_in"]) -> SAEOutput:
        acts = self.encode(x)
        return SAEOutput(self.decode(acts), acts)

    # --- training --------------------------------------------------------------------------
    def training_loss(
        self,
        x: Float[torch.Tensor, "batch d_in"],
        *,
        sparsity_coefficient: float,
        dead_mask: Bool[torch.Tensor, " d_sae"] | None,
    ) -> TrainStep:
        raise NotImplementedError

    @staticmethod
    def reconstruction_loss(
        x_hat: Float[torch.Tensor, "batch d_in"], x: Float[torch.Tensor, "batch d_in"]
    ) -> Float[torch.Tensor, ""]:
        """Squared error summed over d_in, averaged over tokens (one fused op and backward)."""
        return nn.functional.mse_loss(x_hat, x, reduction="sum") / x.shape[0]

    def extra_config(self) -> dict[str, Any]:
        """Architecture settings the SAELens cfg.json needs beyond d_in/d_sae."""
        return {}

    def inference_state(self) -> dict[str, torch.Tensor]:
        """Tensors of the saved SAE, in SAELens's names."""
        return {
            "W_enc": self.W_enc.detach(),
            "b_enc": self.b_enc.detach(),
            "W_dec": self.W_dec.detach(),
            "b_dec": self.b_dec.detach(),
        }

    @torch.no_grad()
    def init_b_dec_(self, x: Float[torch.Tensor, "batch d_in"]) -> None:
        """Start the decoder bias at the data mean, so latents first model the variation."""
        self.b_dec.copy_(x.mean(0))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Project out the gradient along each (unit) decoder row: Adam then moves rows on
        the sphere instead of fighting the renormalisation."""
        grad = self.W_dec.grad
        if grad is None:
            return
        W = self.W_dec
        parallel = (grad * W).sum(1, keepdim=True)  # d_sae 1
        grad.sub_(parallel * W)

    @torch.no_grad()
    def post_step_(self, unit_decoder: bool) -> None:
        """Constraints re-applied after every optimiser step."""
        if unit_decoder:
            self.normalize_decoder_()

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` take and return unscaled ``x``.

        encode: ((s x - b_dec) W_enc) = ((x - b_dec / s) (s W_enc)); decode: divide by s.
        Feature activations (and thresholds on them) are unchanged.
        """
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)
