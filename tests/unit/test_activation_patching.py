"""Batched activation patching equals TransformerLens's one-forward-per-index patching."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mechflow.patching import LogitDifference, activation_patching, normalised

# our kind, by_pos -> TransformerLens's function
TL_FUNCTIONS = {
    ("resid_pre", False): "get_act_patch_resid_pre",
    ("resid_mid", False): "get_act_patch_resid_mid",
    ("attn_out", False): "get_act_patch_attn_out",
    ("mlp_out", False): "get_act_patch_mlp_out",
    ("z", False): "get_act_patch_attn_head_out_all_pos",
    ("z", True): "get_act_patch_attn_head_out_by_pos",
    ("q", False): "get_act_patch_attn_head_q_all_pos",
    ("q", True): "get_act_patch_attn_head_q_by_pos",
    ("k", False): "get_act_patch_attn_head_k_all_pos",
    ("v", True): "get_act_patch_attn_head_v_by_pos",
    ("pattern", False): "get_act_patch_attn_head_pattern_all_pos",
    ("pattern", True): "get_act_patch_attn_head_pattern_by_pos",
}


@pytest.mark.parametrize("norm", ["LN", None])
@pytest.mark.parametrize(("kind", "by_pos"), list(TL_FUNCTIONS), ids=lambda v: str(v))
def test_equals_transformer_lens(norm, kind, by_pos, patching_model, patching_prompts):
    from transformer_lens import patching

    model = patching_model(norm)
    clean, corrupted, metric = patching_prompts()
    _, clean_cache = model.run_with_cache(clean)
    reference = getattr(patching, TL_FUNCTIONS[kind, by_pos])(model, corrupted, clean_cache, metric)
    for batch_size in (1, 5, 64):  # one index per pass, a ragged last pass, all in one
        ours = activation_patching(
            model, clean, corrupted, kind, metric, by_pos=by_pos, batch_size=batch_size
        )
        assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_the_residual_readout_equals_the_logits(patching_model, patching_prompts):
    model = patching_model("LN")
    clean, corrupted, metric = patching_prompts(1)
    with torch.no_grad():
        logits, cache = model.run_with_cache(clean)
    assert_close(metric.from_resid(model, cache["blocks.1.hook_resid_post"]), metric(logits))

    def plain(logits):  # a metric without from_resid: the full logits are computed
        return metric(logits)

    ours = activation_patching(model, clean, corrupted, "z", metric, by_pos=True)
    assert_close(activation_patching(model, clean, corrupted, "z", plain, by_pos=True), ours)


def test_patching_everything_at_a_layer_restores_the_clean_run(patching_model, patching_prompts):
    """Normalised: the corrupted run scores 0, the clean one 1, and patching the whole residual
    stream at the changed position brings back the clean run exactly."""
    model = patching_model("LN")
    clean, corrupted, metric = patching_prompts(2)
    with torch.no_grad():
        clean_value, corrupted_value = metric(model(clean)), metric(model(corrupted))
    result = normalised(
        activation_patching(model, clean, corrupted, "resid_pre", metric), clean_value,
        corrupted_value,
    )  # fmt: skip
    assert_close(result[0, 2], torch.tensor(1.0))  # the differing token, before layer 0
    assert_close(result[0, :2], torch.zeros(2), atol=1e-5, rtol=0)  # before it: nothing differs


def test_a_shard_of_layers_is_those_rows_of_the_whole_sweep(patching_model, patching_prompts):
    model = patching_model(None, n_layers=3)
    clean, corrupted, metric = patching_prompts(3)
    whole = activation_patching(model, clean, corrupted, "z", metric, by_pos=True)
    assert_close(
        activation_patching(model, clean, corrupted, "z", metric, by_pos=True, layers=[2, 0]),
        whole[[2, 0]],
    )


def test_padding_is_masked_in_a_bidirectional_model(patching_model, patching_prompts):
    """Padded prompts of a bidirectional model: equal to a slow loop over indices that runs
    the whole model with the trainer's padding hooks."""
    from mechflow.models.objectives import masked_logits, padding_hooks

    model = patching_model("LN", attention_dir="bidirectional")
    clean, corrupted, metric = patching_prompts(4)
    mask = torch.ones_like(clean)
    mask[1, -2:] = 0
    mask[2, -1:] = 0
    metric = LogitDifference(
        torch.zeros(len(clean), dtype=torch.long), metric.correct, metric.wrong
    )
    ours = activation_patching(model, clean, corrupted, "attn_out", metric, attention_mask=mask)
    with model.hooks(fwd_hooks=padding_hooks(model, mask)):
        _, clean_cache = model.run_with_cache(clean, attention_mask=mask)
    expected = torch.empty(model.cfg.n_layers, clean.shape[1])
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_attn_out"
        for pos in range(clean.shape[1]):

            def patch(act, hook, pos=pos, name=name):
                act[:, pos] = clean_cache[name][:, pos]
                return act

            with torch.no_grad(), model.hooks(fwd_hooks=[(name, patch)]):
                expected[layer, pos] = metric(masked_logits(model, corrupted, mask))
    assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    # and the mask matters: without it the padded keys change the answer
    unmasked = activation_patching(model, clean, corrupted, "attn_out", metric)
    assert not torch.allclose(unmasked, ours, atol=1e-3)


def test_bad_input_is_named(patching_model, patching_prompts):
    model = patching_model(None, attn_only=True, d_mlp=None)
    clean, corrupted, metric = patching_prompts()
    with pytest.raises(ValueError, match="unknown patch kind 'resid'"):
        activation_patching(model, clean, corrupted, "resid", metric)
    with pytest.raises(ValueError, match="no hook 'blocks.0.hook_mlp_out'"):
        activation_patching(model, clean, corrupted, "mlp_out", metric)
    with pytest.raises(ValueError, match="out of range"):
        activation_patching(model, clean, corrupted, "z", metric, layers=[2])
    with pytest.raises(ValueError, match="every position only"):
        activation_patching(model, clean, corrupted, "attn_out", metric, by_pos=True)
    with pytest.raises(ValueError, match="differ in shape"):
        activation_patching(model, clean, corrupted[:, :-1], "z", metric)
    with pytest.raises(ValueError, match="one entry per prompt"):
        LogitDifference(torch.tensor([1, 2]), torch.tensor([1]), torch.tensor([2]))
