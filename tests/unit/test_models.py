"""Model configs, hook names, construction, save/load and the pretrained import."""

import pytest
import torch

from mechflow.models.build import (
    PretrainedUnavailable,
    build_model,
    load_model,
    load_pretrained,
    save_model,
)
from mechflow.models.config import Architecture, TrainingConfig, hook_names


@pytest.mark.parametrize(
    "overrides",
    [
        {"attn_only": True},
        {"attn_only": True, "normalization_type": None},
        {"d_mlp": 32},
        {"d_mlp": 32, "normalization_type": "LNPre", "act_fn": "gelu"},
        {"d_mlp": 32, "positional_embedding_type": "rotary"},
    ],
)
def test_hook_names_match_the_hooks_a_forward_pass_fires(overrides):
    arch = Architecture(
        n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=12, d_vocab=20, **overrides
    )
    model = build_model(arch, seed=0)
    _, cache = model.run_with_cache(torch.zeros(1, 5, dtype=torch.long))
    assert sorted(hook_names(arch)) == sorted(cache.keys())


def test_architecture_rejects_bad_values():
    with pytest.raises(ValueError, match="n_layers"):
        Architecture(
            n_layers=0, d_model=16, n_heads=2, d_head=8, n_ctx=12, d_vocab=20, attn_only=True
        )
    with pytest.raises(ValueError, match="d_mlp"):
        Architecture(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=12, d_vocab=20)
    with pytest.raises(ValueError, match="unknown key"):
        Architecture.from_dict({"n_layers": 1, "d_modle": 16})


def test_training_config_checks_checkpoints():
    with pytest.raises(ValueError, match="checkpoints"):
        TrainingConfig(steps=10, batch_size=2, checkpoints=(0, 11))
    assert TrainingConfig(steps=10, batch_size=2, checkpoints=(10, 0, 10)).checkpoints == (0, 10)


def test_same_seed_same_weights(tiny_arch):
    a, b = build_model(tiny_arch, seed=3), build_model(tiny_arch, seed=3)
    c = build_model(tiny_arch, seed=4)
    torch.testing.assert_close(a.W_Q, b.W_Q)
    assert not torch.allclose(a.W_Q, c.W_Q)


def test_save_load_round_trip(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "m", extra={"source": "trained"})
    loaded = load_model(tmp_path / "m")
    tokens = torch.randint(0, 20, (3, 10))
    torch.testing.assert_close(loaded(tokens), tiny_model(tokens))
    assert not list((tmp_path / "m").glob(".*.tmp")), "temporary files left behind"


def test_load_model_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_pretrained_absent_fails_fast_with_a_clear_message():
    with pytest.raises(PretrainedUnavailable, match="are not on this machine") as err:
        load_pretrained("gpt2")
    assert "hf download gpt2" in str(err.value) and "huggingface" in str(err.value)
    with pytest.raises(PretrainedUnavailable, match="'/nonexistent/gpt2' is not a directory"):
        load_pretrained("gpt2", path="/nonexistent/gpt2")


@pytest.mark.slow
def test_pretrained_from_a_local_directory_matches_hugging_face(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64, n_ctx=64)
    )
    hf.eval()  # no dropout
    hf.save_pretrained(tmp_path / "tiny-gpt2")
    model = load_pretrained("tiny_gpt2", path=str(tmp_path / "tiny-gpt2"))
    tokens = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        theirs = hf(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
