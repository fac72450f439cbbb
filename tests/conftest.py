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
def random_norm_model():
    """``make(normalization_type, attn_only=False)``: a 2-layer HookedTransformer (d_model 32,
    n_ctx 16, vocab 50, MLPs unless attn_only) whose every bias and norm weight is random, so no
    term of an attribution or a lens can vanish by accident."""
    import warnings

    def make(normalization_type, attn_only=False):
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import transformer_lens as tl

            cfg = tl.HookedTransformerConfig(
                n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=None if attn_only else 64,
                n_ctx=16, d_vocab=50, act_fn="gelu", attn_only=attn_only,
                normalization_type=normalization_type, seed=0, device="cpu",
            )  # fmt: skip
            model = tl.HookedTransformer(cfg)
        with torch.no_grad():
            for name, param in model.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf == "w":
                    param.copy_(1 + 0.3 * torch.randn_like(param))
                elif leaf.startswith("b"):
                    param.copy_(0.3 * torch.randn_like(param))
        return model.eval()

    return make


@pytest.fixture
def patching_model():
    """``make(normalization_type, **overrides)``: a 2-layer HookedTransformer with MLPs (d_model
    24, 3 heads, n_ctx 7, vocab 40) for the patching engine's tests against TransformerLens."""
    import warnings

    def make(normalization_type, **overrides):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import transformer_lens as tl

            cfg = dict(
                n_layers=2, d_model=24, n_heads=3, d_head=8, d_mlp=48, n_ctx=7, d_vocab=40,
                act_fn="gelu", normalization_type=normalization_type, seed=0, device="cpu",
            )  # fmt: skip
            cfg.update(overrides)
            return tl.HookedTransformer(tl.HookedTransformerConfig(**cfg)).eval()

    return make


@pytest.fixture
def patching_prompts():
    """``make(seed)``: 3 clean prompts of 7 tokens (vocab 40), corrupted at position 2, and a
    logit difference read at positions 6, 5, 6."""

    def make(seed=0):
        import torch

        from mechflow.patching import LogitDifference

        g = torch.Generator().manual_seed(seed)
        clean = torch.randint(0, 40, (3, 7), generator=g)
        corrupted = clean.clone()
        corrupted[:, 2] = torch.randint(0, 40, (3,), generator=g)  # one token differs
        metric = LogitDifference(
            positions=torch.tensor([6, 5, 6]),
            correct=torch.randint(0, 40, (3,), generator=g),
            wrong=torch.randint(0, 40, (3,), generator=g),
        )
        return clean, corrupted, metric

    return make


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
