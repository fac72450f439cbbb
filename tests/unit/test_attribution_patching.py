"""Attribution patching is exact where the metric is linear, and edge attributions add up to node
attributions (the residual stream is a sum)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mechflow.patching import activation_patching
from mechflow.patching.attribution import (
    attribution_patching,
    attribution_vs_patching,
    edge_attribution_patching,
)


@pytest.mark.parametrize(("kind", "by_pos"), [("z", False), ("z", True), ("attn_out", False)])
def test_exact_on_the_last_layer_of_an_attention_only_model_without_layernorm(
    kind, by_pos, patching_model, patching_prompts
):
    model = patching_model(None, attn_only=True, d_mlp=None)
    clean, corrupted, metric = patching_prompts(8)
    with torch.no_grad():
        corrupted_score = float(metric(model(corrupted)))
    attribution = attribution_patching(model, clean, corrupted, kind, metric, by_pos=by_pos)
    patched = activation_patching(model, clean, corrupted, kind, metric, by_pos=by_pos)
    exact, corr = attribution_vs_patching(attribution, patched, corrupted_score)
    assert_close(attribution[-1], exact[-1], atol=1e-4, rtol=1e-4)
    assert corr > 0  # and only approximate before the last layer
    assert attribution.shape == patched.shape


def test_leaves_no_gradients_on_the_parameters(patching_model, patching_prompts):
    model = patching_model("LN")
    for p in model.parameters():
        p.requires_grad_(False)  # as a loaded model may be
    clean, corrupted, metric = patching_prompts(9)
    attribution_patching(model, clean, corrupted, "z", metric)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("norm", ["LN", None])
def test_edges_out_of_a_node_sum_to_its_attribution(norm, patching_model, patching_prompts):
    model = patching_model(norm, n_layers=3)
    clean, corrupted, metric = patching_prompts(10)
    scores, senders, receivers = edge_attribution_patching(model, clean, corrupted, metric)
    assert scores.shape == (len(senders), len(receivers))
    assert senders[:3] == ["embed", "a0.0", "a0.1"] and receivers[-1] == "logits"
    by_sender = dict(zip(senders, scores.sum(1), strict=True))
    heads = attribution_patching(model, clean, corrupted, "z", metric)
    mlps = attribution_patching(model, clean, corrupted, "mlp_out", metric).sum(1)
    resid = attribution_patching(model, clean, corrupted, "resid_pre", metric).sum(1)
    for layer in range(3):
        for head in range(3):
            assert_close(by_sender[f"a{layer}.{head}"], heads[layer, head], atol=1e-4, rtol=1e-3)
        assert_close(by_sender[f"m{layer}"], mlps[layer], atol=1e-4, rtol=1e-3)
    assert_close(by_sender["embed"], resid[0], atol=1e-4, rtol=1e-3)
    # no edge runs backwards: a layer-1 head feeds neither layer 0 nor layer 1's heads
    upstream = [i for i, r in enumerate(receivers) if r[:2] in ("a0", "a1", "m0")]
    assert (scores[senders.index("a1.0"), upstream] == 0).all()
    assert scores[senders.index("a1.0"), receivers.index("m1")] != 0  # its own layer's MLP
    assert model.cfg.use_split_qkv_input is False and model.cfg.use_attn_result is False


def test_bad_kind_is_named(patching_model, patching_prompts):
    model = patching_model(None, attn_only=True, d_mlp=None)
    clean, corrupted, metric = patching_prompts()
    with pytest.raises(ValueError, match="unknown attribution kind 'pattern'"):
        attribution_patching(model, clean, corrupted, "pattern", metric)
    with pytest.raises(ValueError, match="hook 'blocks.0.hook_mlp_out'"):
        attribution_patching(model, clean, corrupted, "mlp_out", metric)
    with pytest.raises(ValueError, match="by_pos"):
        attribution_patching(model, clean, corrupted, "attn_out", metric, by_pos=True)
