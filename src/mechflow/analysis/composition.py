"""Weight-based circuit scores (Elhage et al. 2021): head composition and OV copying.

TransformerLens matrices act on row vectors (``x @ W``): ``model.OV[l, h]`` is W_V W_O and
``model.QK[l, h]`` is W_Q W_Kᵀ (query row on the left: ``q_res @ W_QK @ k_resᵀ``). Head A's output
``x @ W_OV^A`` feeds head B through
  * Q-composition: its query side, ``(x W_OV^A) W_QK^B`` → product W_OV^A · W_QK^B,
  * K-composition: its key side, ``q W_QK^B (x W_OV^A)ᵀ`` → product W_OV^A · (W_QK^B)ᵀ,
  * V-composition: its value side, ``(x W_OV^A) W_OV^B`` → product W_OV^A · W_OV^B,
(the column-vector formulas of the paper, transposed). All products stay ``FactoredMatrix``es, so
norms come from SVDs of d_head-sized factors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float

if TYPE_CHECKING:
    from transformer_lens import FactoredMatrix, HookedTransformer

KINDS = ("Q", "K", "V")
COPYING_SCORES = ("eigen_ratio", "positive_fraction")


def _factored(A: torch.Tensor, B: torch.Tensor) -> FactoredMatrix:
    from transformer_lens import FactoredMatrix

    return FactoredMatrix(A, B)


def composition_score(W_A: FactoredMatrix, W_B: FactoredMatrix) -> Float[torch.Tensor, " ..."]:
    """‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F), broadcasting over leading dims."""
    return (W_A @ W_B).norm() / (W_A.norm() * W_B.norm())


def composition_scores(
    OV: FactoredMatrix, QK: FactoredMatrix
) -> dict[str, dict[tuple[int, int], Float[torch.Tensor, "head_from head_to"]]]:
    """Scores of every (earlier layer, later layer) pair: ``{kind: {(l_from, l_to): heads × heads}}``.

    ``OV`` and ``QK`` have shape (layer, head_index, d_model, d_model), as ``model.OV``/``model.QK``.
    """
    OV = _factored(OV.A.double(), OV.B.double())
    QK = _factored(QK.A.double(), QK.B.double())
    n_layers = OV.shape[0]
    out: dict[str, dict] = {kind: {} for kind in KINDS}
    for l_from in range(n_layers):
        W_A = OV[l_from].unsqueeze(1)  # head_from 1 d_model d_model
        for l_to in range(l_from + 1, n_layers):
            later = {"Q": QK[l_to], "K": QK[l_to].T, "V": OV[l_to]}
            for kind, W_B in later.items():
                out[kind][(l_from, l_to)] = composition_score(W_A, W_B.unsqueeze(0)).float()
    return out


def model_composition_scores(model: HookedTransformer):
    """``composition_scores`` of a model's weights (LayerNorm ignored, as in the paper)."""
    with torch.no_grad():
        return composition_scores(model.OV, model.QK)


def random_composition_baseline(d_model: int, d_head: int, n_samples: int, seed: int) -> float:
    """Mean composition score of random rank-d_head matrices: W = X Y, Gaussian X, Y.

    The score is scale-free and every kind has the same shapes and ranks (d_model × d_model,
    rank min(d_head, d_model)), so one baseline serves Q, K and V.
    """
    if n_samples < 1:
        raise ValueError(f"baseline samples must be >= 1, got {n_samples}")
    gen = torch.Generator().manual_seed(seed)

    def sample() -> FactoredMatrix:
        left = torch.randn(n_samples, d_model, d_head, generator=gen, dtype=torch.float64)
        right = torch.randn(n_samples, d_head, d_model, generator=gen, dtype=torch.float64)
        return _factored(left, right)

    return float(composition_score(sample(), sample()).mean())


def full_ov_circuit(model: HookedTransformer) -> FactoredMatrix:
    """W_E W_OV W_U per head, shape (layer, head_index, d_vocab, d_vocab), kept factored."""
    with torch.no_grad():
        return model.W_E @ model.OV @ model.W_U


def copying_scores(
    circuit: FactoredMatrix, rel_tol: float = 1e-6
) -> dict[str, Float[torch.Tensor, " ..."]]:
    """Eigenvalue copying scores of square circuits (Elhage et al.'s OV-circuit analysis).

    ``eigen_ratio`` = Σ Re λ / Σ |λ| (1 for a pure copying map, -1 for an anti-copying one);
    ``positive_fraction`` = share of eigenvalues with positive real part. Eigenvalues come from the
    small inner product (``FactoredMatrix.eigenvalues``); those below ``rel_tol`` × the largest
    modulus are numerically zero (rank deficit) and are left out of ``positive_fraction``.
    """
    with torch.no_grad():
        eig = _factored(circuit.A.double(), circuit.B.double()).eigenvalues  # ... mdim
    modulus = eig.abs()
    ratio = eig.real.sum(-1) / modulus.sum(-1)
    nonzero = modulus > rel_tol * modulus.amax(-1, keepdim=True)
    positive = ((eig.real > 0) & nonzero).sum(-1) / nonzero.sum(-1).clamp(min=1)
    return {"eigen_ratio": ratio.float(), "positive_fraction": positive.float()}
