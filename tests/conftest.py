"""Shared fixtures: seeding, tiny models built from configs, and tiny token datasets."""

from __future__ import annotations

import os

import pytest

from mechflow.runtime import OFFLINE_ENV

for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed everything; one torch thread, since 2 threads stall at OpenMP barriers under load."""
    from mechflow.runtime import seed_everything, set_threads

    seed_everything(0)
    set_threads(1)


@pytest.fixture
def tiny_arch():
    """2 layers, d_model 16, attention-only: the unit-test model."""
    from mechflow.models.config import Architecture

    return Architecture(
        n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=24, d_vocab=20, attn_only=True
    )


@pytest.fixture
def tiny_model(tiny_arch):
    from mechflow.models.build import build_model

    return build_model(tiny_arch, seed=0)


@pytest.fixture
def tiny_model_dir(tiny_model, tmp_path):
    from mechflow.models.build import save_model

    out = tmp_path / "model"
    save_model(tiny_model, out)
    return out


@pytest.fixture
def half_len():
    return 8


@pytest.fixture
def repeated_tokens_path(tmp_path, half_len):
    """``[BOS] + r + r`` sequences for the tiny model (vocab 20), saved as a token dataset."""
    from mechflow.data.induction import repeated_random
    from mechflow.data.tokens import save_tokens

    path = tmp_path / "repeated.npy"
    save_tokens(repeated_random(n_sequences=12, half_len=half_len, d_vocab=20, seed=1), path)
    return path
