"""Our GPT: configs, KV cache, and exact conversion to and from TransformerLens."""

import pytest
import torch

from mechflow.models.config import Architecture, hook_names
from mechflow.models.gpt import GPT, GPTConfig, KVCache, from_hooked, to_hooked

TINY = {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_head": 8, "n_ctx": 24, "d_vocab": 20}


def jitter(model: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Perturb every parameter: zero biases and unit LayerNorms would hide conversion bugs."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    return model


def tiny_gpt(**overrides) -> GPT:
    fields = {**TINY, "d_mlp": 32, **overrides}
    return jitter(GPT(GPTConfig(**fields), seed=0))


def tiny_hooked(**overrides):
    from mechflow.models.build import build_model

    fields = {**TINY, "d_mlp": 32, "act_fn": "gelu_new", **overrides}
    return jitter(build_model(Architecture(**fields), seed=0))


def tokens(batch=3, pos=24, d_vocab=20):
    return torch.randint(0, d_vocab, (batch, pos), generator=torch.Generator().manual_seed(2))


def test_config_from_architecture_and_back():
    arch = Architecture(**TINY, d_mlp=32, act_fn="gelu_new")
    cfg = GPTConfig.from_architecture(arch)
    assert (cfg.d_mlp, cfg.act_fn, cfg.attn_only) == (32, "gelu_new", False)
    assert cfg.to_architecture() == arch
    attn_only = Architecture(**TINY, attn_only=True, act_fn="gelu_new")
    assert GPTConfig.from_architecture(attn_only).to_architecture() == attn_only


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"normalization_type": None}, "normalization_type None"),
        ({"normalization_type": "LNPre"}, "normalization_type 'LNPre'"),
        ({"positional_embedding_type": "rotary"}, "rotary"),
        ({"attention_dir": "bidirectional"}, "bidirectional"),
        ({"d_vocab_out": 7}, "d_vocab_out 7"),
        ({"act_fn": "solu_ln"}, "solu_ln"),
    ],
)
def test_config_refuses_what_ours_cannot_express(overrides, match):
    arch = Architecture(**TINY, d_mlp=32, **overrides)
    with pytest.raises(ValueError, match=match) as err:
        GPTConfig.from_architecture(arch)
    assert "build_model" in str(err.value)


def test_config_validates():
    with pytest.raises(ValueError, match="d_mlp"):
        GPTConfig(**TINY)
    with pytest.raises(ValueError, match="act_fn"):
        GPTConfig(**TINY, d_mlp=8, act_fn="swish")


def test_same_seed_same_weights():
    cfg = GPTConfig(**TINY, d_mlp=32)
    a, b, c = GPT(cfg, seed=3), GPT(cfg, seed=3), GPT(cfg, seed=4)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)
    assert not torch.equal(a.embed.weight, c.embed.weight)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"act_fn": "relu"},
        {"act_fn": "gelu_pytorch_tanh"},
        {"attn_only": True, "d_mlp": None},
        {"n_heads": 3, "d_head": 4},  # n_heads * d_head != d_model
    ],
)
def test_ours_to_hooked_gives_the_same_logits(overrides):
    gpt = tiny_gpt(**overrides)
    hooked = to_hooked(gpt)
    toks = tokens()
    with torch.no_grad():
        torch.testing.assert_close(hooked(toks), gpt(toks), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("overrides", [{}, {"n_heads": 4, "d_head": 6}])
def test_hooked_to_ours_gives_the_same_logits(overrides):
    hooked = tiny_hooked(**overrides)  # GPT-2's architecture: LN, gelu_new, learned positions
    gpt = from_hooked(hooked)
    toks = tokens()
    with torch.no_grad():
        torch.testing.assert_close(gpt(toks), hooked(toks), atol=1e-4, rtol=1e-4)


def test_round_trips_give_identical_state_dicts():
    gpt = tiny_gpt()
    again = from_hooked(to_hooked(gpt)).state_dict()
    assert again.keys() == gpt.state_dict().keys()
    torch.testing.assert_close(again, gpt.state_dict(), rtol=0, atol=0)

    hooked = tiny_hooked()
    back = to_hooked(from_hooked(hooked)).state_dict()
    assert back.keys() == hooked.state_dict().keys()
    torch.testing.assert_close(back, hooked.state_dict(), rtol=0, atol=0)


def test_conversion_copies_rather_than_shares():
    gpt = tiny_gpt()
    hooked = to_hooked(gpt)
    ours_again = from_hooked(hooked)
    before = hooked.W_E.detach().clone()
    with torch.no_grad():
        gpt.embed.weight.add_(1.0)
        ours_again.embed.weight.add_(1.0)
    torch.testing.assert_close(hooked.W_E.detach(), before, rtol=0, atol=0)


def test_from_hooked_accepts_folded_layer_norm():
    hooked = tiny_hooked(normalization_type="LNPre")
    gpt = from_hooked(hooked)
    assert torch.equal(gpt.blocks[0].ln1.weight, torch.ones(16))
    assert torch.equal(gpt.ln_final.bias, torch.zeros(16))
    toks = tokens()
    with torch.no_grad():
        torch.testing.assert_close(gpt(toks), hooked(toks), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"positional_embedding_type": "rotary"}, "positional_embedding_type='rotary'"),
        ({"normalization_type": None}, "normalization_type=None"),
        ({"act_fn": "solu_ln"}, "act_fn='solu_ln'"),
    ],
)
def test_from_hooked_refuses_other_architectures(overrides, match):
    with pytest.raises(ValueError, match=match):
        from_hooked(tiny_hooked(**overrides))


def test_hook_names_and_run_with_cache_work_on_the_converted_model():
    gpt = tiny_gpt()
    hooked = to_hooked(gpt)
    toks = tokens()
    logits, cache = hooked.run_with_cache(toks)
    assert sorted(cache.keys()) == sorted(hook_names(gpt.cfg.to_architecture()))
    with torch.no_grad():
        resid_pre = gpt.embed(toks) + gpt.pos_embed.weight[: toks.shape[1]]
        torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], resid_pre)
        last = gpt.unembed(gpt.ln_final(cache[f"blocks.{gpt.cfg.n_layers - 1}.hook_resid_post"]))
        torch.testing.assert_close(last, gpt(toks), atol=1e-4, rtol=1e-4)
    assert not hooked.hook_dict["blocks.0.hook_resid_pre"].fwd_hooks, "a hook was left attached"


def test_kv_cache_in_chunks_matches_the_full_forward():
    gpt = tiny_gpt()
    toks = tokens()
    with torch.no_grad():
        full = gpt(toks)
        cache = gpt.new_cache(batch=3)
        pieces, start = [], 0
        for size in (5, 1, 4, 1, 1, 7, 5):  # multi-token chunks after a prefix use the mask
            pieces.append(gpt(toks[:, start : start + size], cache))
            start += size
    assert cache.pos == 24
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_return_cache_and_last_only():
    gpt = tiny_gpt()
    toks = tokens()
    with torch.no_grad():
        logits, cache = gpt(toks[:, :10], return_cache=True)
        assert isinstance(cache, KVCache) and cache.pos == 10 and cache.capacity == 24
        last = gpt(toks[:, 10:12], cache, last_only=True)
        full = gpt(toks[:, :12])
    assert last.shape == (3, 1, 20)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, full[:, :10], atol=1e-5, rtol=1e-5)


def test_going_past_the_context_is_refused():
    gpt = tiny_gpt()
    with torch.no_grad():
        with pytest.raises(ValueError, match="n_ctx=24"):
            gpt(torch.zeros(1, 25, dtype=torch.long))
        cache = gpt.new_cache(batch=1)
        gpt(torch.zeros(1, 24, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="capacity of 24"):
            gpt(torch.zeros(1, 1, dtype=torch.long), cache)
        small = gpt.new_cache(batch=1, capacity=4)
        with pytest.raises(ValueError, match="capacity of 4"):
            gpt(torch.zeros(1, 5, dtype=torch.long), small)
        with pytest.raises(ValueError, match="batch"):
            gpt(torch.zeros(2, 1, dtype=torch.long), gpt.new_cache(batch=1))
    with pytest.raises(ValueError, match="capacity"):
        gpt.new_cache(batch=1, capacity=25)


@pytest.mark.parametrize("name", ["gelu_new", "gelu_pytorch_tanh"])
def test_gelus_are_transformer_lens_gelus(name):
    from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

    from mechflow.models.gpt import ACT_FNS

    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(
        ACT_FNS[name](x), SUPPORTED_ACTIVATIONS[name](x), atol=1e-6, rtol=1e-6
    )
    # the same function: GPT-2's tanh approximation of GELU, through one kernel or five
    torch.testing.assert_close(
        SUPPORTED_ACTIVATIONS["gelu_pytorch_tanh"](x), SUPPORTED_ACTIVATIONS["gelu_new"](x)
    )
