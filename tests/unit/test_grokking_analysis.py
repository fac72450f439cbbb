"""Modular-addition data, the Fourier basis, key frequencies and progress measures on planted
answers, where the right result is known in closed form."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mechflow.experiments.grokking.checks import grokking_checks
from mechflow.experiments.grokking.fourier import (
    embedding_fourier_norms,
    fourier_basis,
    key_frequencies,
    key_frequency_fraction,
    unit_frequencies,
)
from mechflow.experiments.grokking.modular_addition import (
    all_pairs,
    check_task,
    is_prime,
    train_test_split,
)
from mechflow.experiments.grokking.phases import phase_boundaries, phase_table
from mechflow.experiments.grokking.progress_measures import split_logits

P = 31


def test_is_prime():
    assert [n for n in range(20) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19]


@pytest.mark.parametrize(
    "modulus, fraction, match",
    [
        (15, 0.3, "modulus"),
        (2, 0.3, "modulus"),
        (13, 0.0, "train_fraction"),
        (13, 1.0, "train_fraction"),
    ],
)
def test_check_task_refuses(modulus, fraction, match):
    with pytest.raises(ValueError, match=match):
        check_task(modulus, fraction)


def test_pairs_and_split():
    inputs, labels = all_pairs(P)
    assert inputs.shape == (P * P, 3)
    assert (inputs[:, 2] == P).all()
    np.testing.assert_array_equal(labels, (inputs[:, 0] + inputs[:, 1]) % P)
    train, test = train_test_split(P, 0.3, seed=0)
    assert len(train) == round(0.3 * P * P)
    assert not set(train) & set(test) and len(train) + len(test) == P * P
    np.testing.assert_array_equal(train, train_test_split(P, 0.3, seed=0)[0])
    assert not np.array_equal(train, train_test_split(P, 0.3, seed=1)[0])


def test_fourier_basis_is_orthonormal():
    basis, labels = fourier_basis(P)
    np.testing.assert_allclose(basis @ basis.T, np.eye(P), atol=1e-10)
    assert labels[:3] == ["const", "cos 1", "sin 1"]


def planted_embedding(keys: list[int], d_model: int = 16, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.arange(P)
    cols = []
    for k in keys:
        cols += [np.cos(2 * np.pi * k * x / P), np.sin(2 * np.pi * k * x / P)]
    w = np.stack(cols, axis=1) @ rng.normal(size=(2 * len(keys), d_model))  # p d_model
    return w + noise * rng.normal(size=w.shape)


def test_embedding_norm_sits_on_the_planted_frequencies():
    table = embedding_fourier_norms(planted_embedding([3, 11], noise=0.01))
    shares = table[table.component == "cos"].set_index("frequency")["share"]
    assert shares[[3, 11]].sum() > 0.99
    assert shares.drop([3, 11]).max() < 0.01


def planted_neuron_maps(keys: list[int], per_key: int = 8) -> np.ndarray:
    """ReLU(cos(w(a+b) + phase)) neurons: each one's frequency is known."""
    a, b = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    rng = np.random.default_rng(1)
    maps = [
        np.maximum(np.cos(2 * np.pi * k * (a + b) / P + rng.uniform(0, 2 * np.pi)), 0)
        for k in keys
        for _ in range(per_key)
    ]
    maps.append(np.zeros((P, P)))  # a dead neuron
    return np.stack(maps, axis=-1)  # a b neuron


def test_neuron_frequencies_and_key_frequencies_are_recovered():
    keys = [4, 9, 13]
    table = unit_frequencies(planted_neuron_maps(keys), "neuron")
    live = table[table.live]
    assert live.unit.nunique() == 3 * 8  # the dead neuron is not live
    best = live.loc[live.groupby("unit")["fraction_explained"].idxmax()]
    assert sorted(set(best.frequency)) == keys
    # ReLU adds harmonics, but the fundamental carries most of the variance
    assert best.fraction_explained.min() > 0.7
    embedding = embedding_fourier_norms(planted_embedding(keys))
    found = key_frequencies(table, embedding)
    assert found.frequency.tolist() == keys
    assert found.embedding_share.sum() == pytest.approx(1.0, abs=1e-6)
    assert key_frequency_fraction(table, keys).min() > 0.7


def key_logits(keys: list[int], scale: float) -> torch.Tensor:
    """Logits scale·Σ cos(w(a+b−c)): the paper's algorithm, exactly on the key frequencies."""
    a, b = np.divmod(np.arange(P * P), P)
    c = np.arange(P)
    s = (a + b)[:, None] - c[None, :]
    logits = sum(np.cos(2 * np.pi * k * s / P) for k in keys)
    return torch.tensor(scale * logits)


def test_restricted_and_excluded_logits_on_a_planted_solution():
    keys = [5, 12]
    logits = key_logits(keys, scale=10.0)
    restricted, excluded = split_logits(logits, keys)
    torch.testing.assert_close(restricted, logits - logits.mean(0) + logits.mean(0))
    torch.testing.assert_close(excluded, torch.zeros_like(excluded), atol=1e-9, rtol=0)
    # with the wrong key, nothing is kept but the mean
    restricted, excluded = split_logits(logits, [7])
    torch.testing.assert_close(excluded, logits)


def synthetic_progress(grokked: bool) -> pd.DataFrame:
    """A run that memorises by 100, forms its circuit, and (optionally) groks at 400."""
    rows = []
    for epoch in range(0, 601, 20):
        train = 4.0 if epoch == 0 else 0.01
        if grokked:
            test = 8.0 if epoch < 300 else 8.0 * 0.5 ** ((epoch - 280) / 10)
            restricted = 4.0 if epoch < 200 else 0.5 ** ((epoch - 180) / 20)
            excluded = 1.0 if epoch < 100 else 1.0 + (epoch - 100) / 50
        else:
            test, restricted, excluded = 8.0 + epoch / 100, 4.0, 1.0
        acc_test = 1.0 if grokked and test < 0.05 else 0.05
        values = {
            "train_loss": train,
            "train_accuracy": 0.01 if epoch < 100 else 1.0,
            "test_loss": test,
            "test_accuracy": acc_test,
            "restricted_loss": restricted,
            "excluded_loss": excluded,
            "weight_norm": 30.0,
        }
        rows += [{"model": "m", "epoch": epoch, "metric": k, "value": v} for k, v in values.items()]
    return pd.DataFrame(rows)


def checks_for(grokked: bool) -> pd.DataFrame:
    progress = synthetic_progress(grokked)
    wide = progress.pivot(index="epoch", columns="metric", values="value")
    phases = phase_table(phase_boundaries(wide), 600)
    keys = pd.DataFrame({"frequency": [3, 7], "embedding_share": [0.4, 0.4]})
    return grokking_checks(progress, phases, keys).set_index("check")


def test_checks_pass_on_a_grokking_run():
    checks = checks_for(grokked=True)
    assert checks.passed.all(), checks


def test_checks_fail_on_a_run_that_never_generalises():
    checks = checks_for(grokked=False)
    assert not checks.loc["memorised_well_before_grokking", "passed"]
    assert not checks.loc["restricted_loss_falls_first", "passed"]
    assert not checks.loc["excluded_loss_rises", "passed"]


def test_phase_boundaries_read_off_the_measures():
    wide = synthetic_progress(True).pivot(index="epoch", columns="metric", values="value")
    bounds = phase_boundaries(wide)
    assert bounds["memorised"] == 100
    assert bounds["cleanup_start"] < bounds["grokked"]
    assert np.isnan(
        phase_boundaries(
            synthetic_progress(False).pivot(index="epoch", columns="metric", values="value")
        )["grokked"]
    )
