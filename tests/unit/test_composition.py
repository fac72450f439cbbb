"""Composition and copying scores: dense references and hand-built circuits."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mechflow.analysis.composition import (
    KINDS,
    composition_scores,
    copying_scores,
    full_ov_circuit,
    model_composition_scores,
    random_composition_baseline,
)


def _dense_score(W_A, W_B):
    return torch.linalg.norm(W_A @ W_B) / (torch.linalg.norm(W_A) * torch.linalg.norm(W_B))


@torch.no_grad()
def test_composition_matches_dense_matrices(tiny_model):
    scores = model_composition_scores(tiny_model)
    W_OV = tiny_model.W_V @ tiny_model.W_O  # layer head d_model d_model
    W_QK = tiny_model.W_Q @ tiny_model.W_K.transpose(-1, -2)
    later = {"Q": W_QK[1], "K": W_QK[1].transpose(-1, -2), "V": W_OV[1]}
    for kind in KINDS:
        assert list(scores[kind]) == [(0, 1)]
        matrix = scores[kind][(0, 1)]
        assert matrix.shape == (2, 2)
        for h_from in range(2):
            for h_to in range(2):
                expected = _dense_score(W_OV[0, h_from], later[kind][h_to])
                assert_close(matrix[h_from, h_to], expected, rtol=1e-4, atol=1e-5)
    # Q- and K-composition differ (the transpose matters) on random weights
    assert not torch.allclose(scores["Q"][(0, 1)], scores["K"][(0, 1)])


@torch.no_grad()
def test_aligned_heads_compose_above_baseline(tiny_model):
    """Head 1.0 reads its query (Q) / key (K) / value (V) from head 0.0's output space."""
    W_O = tiny_model.blocks[0].attn.W_O[0]  # d_head d_model
    tiny_model.blocks[1].attn.W_Q[0] = W_O.T
    tiny_model.blocks[1].attn.W_K[1] = W_O.T
    tiny_model.blocks[1].attn.W_V[1] = W_O.T
    scores = model_composition_scores(tiny_model)
    baseline = random_composition_baseline(16, 8, n_samples=200, seed=0)
    aligned = {"Q": (0, 0), "K": (0, 1), "V": (0, 1)}
    for kind, (h_from, h_to) in aligned.items():
        matrix = scores[kind][(0, 1)]
        assert matrix[h_from, h_to] > baseline + 0.1, kind
        assert matrix[h_from, h_to] == matrix.max(), kind


def test_baseline_is_seeded_and_plausible():
    first = random_composition_baseline(16, 8, n_samples=100, seed=1)
    assert first == random_composition_baseline(16, 8, n_samples=100, seed=1)
    assert first != random_composition_baseline(16, 8, n_samples=100, seed=2)
    assert 0.0 < first < 1.0
    # wider residual streams make random low-rank matrices more orthogonal
    assert random_composition_baseline(256, 8, n_samples=50, seed=1) < first
    with pytest.raises(ValueError):
        random_composition_baseline(16, 8, n_samples=0, seed=1)


def test_one_layer_has_nothing_to_compose(tiny_arch):
    from dataclasses import replace

    from mechflow.models.build import build_model

    model = build_model(replace(tiny_arch, n_layers=1), seed=0)
    assert all(not pairs for pairs in model_composition_scores(model).values())
    assert all(not pairs for pairs in composition_scores(model.OV, model.QK).values())


@torch.no_grad()
def test_copying_head_scores_one_and_anticopying_minus_one(tiny_model):
    """W_E P Pᵀ W_Eᵀ is positive semi-definite: a pure copying circuit; negated, anti-copying."""
    P, _ = torch.linalg.qr(torch.randn(16, 8))  # d_model d_head, orthonormal columns
    tiny_model.unembed.W_U[:] = tiny_model.embed.W_E.T
    for layer, sign in ((0, 1.0), (1, -1.0)):
        tiny_model.blocks[layer].attn.W_V[0] = P
        tiny_model.blocks[layer].attn.W_O[0] = sign * P.T
    scores = copying_scores(full_ov_circuit(tiny_model))
    assert scores["eigen_ratio"].shape == (2, 2)
    assert scores["eigen_ratio"][0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert scores["positive_fraction"][0, 0].item() == 1.0
    assert scores["eigen_ratio"][1, 0].item() == pytest.approx(-1.0, abs=1e-5)
    assert scores["positive_fraction"][1, 0].item() == 0.0


@torch.no_grad()
def test_copying_scores_agree_with_the_dense_circuit(tiny_model):
    scores = copying_scores(full_ov_circuit(tiny_model))
    dense = (
        tiny_model.W_E @ tiny_model.W_V @ tiny_model.W_O @ tiny_model.W_U
    )  # layer head vocab vocab
    eig = torch.linalg.eigvals(dense.double())
    # the d_vocab x d_vocab circuit has the inner product's eigenvalues plus zeros
    assert_close(
        scores["eigen_ratio"], (eig.real.sum(-1) / eig.abs().sum(-1)).float(), rtol=1e-4, atol=1e-4
    )
    assert ((scores["eigen_ratio"] >= -1) & (scores["eigen_ratio"] <= 1)).all()
    assert ((scores["positive_fraction"] >= 0) & (scores["positive_fraction"] <= 1)).all()
