"""Direct logit attribution is exact: components sum to the logits and match TransformerLens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from mechflow.analysis.logit_attribution import (
    KINDS,
    attribute,
    component_outputs,
    components,
    direct_attributions,
    head_attribution_matrix,
    logit_attribution_table,
    logit_difference_directions,
    next_token_directions,
)

NORMS = ["LN", None, "LNPre", "RMS"]


def _tokens(n=6, pos=16, seed=1):
    return torch.randint(0, 50, (n, pos), generator=torch.Generator().manual_seed(seed))


def _final_resid(model, cache):
    return cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]


@pytest.mark.parametrize("norm", NORMS)
@torch.no_grad()
def test_components_sum_to_the_final_norm_output(norm, random_norm_model):
    model, tokens = random_norm_model(norm), _tokens()
    _, cache = model.run_with_cache(tokens)
    labels, stack = component_outputs(model, cache)
    assert stack.shape == (len(labels), *tokens.shape, 32)
    resid = _final_resid(model, cache)
    expected = resid if norm is None else model.ln_final(resid)
    assert_close(stack.sum(0), expected, atol=1e-4, rtol=0)
    has_bias = norm == "LN"
    assert (labels[-1].kind == "ln_bias") == has_bias
    assert len(labels) == 2 + 2 * (4 + 2) + has_bias


@pytest.mark.parametrize("norm", NORMS)
@torch.no_grad()
def test_attributions_sum_to_the_correct_logit_minus_its_bias(norm, random_norm_model):
    model, tokens = random_norm_model(norm), _tokens()
    logits, cache = model.run_with_cache(tokens)
    _, stack = component_outputs(model, cache)
    attrs = attribute(stack, next_token_directions(model, tokens))  # component batch pos-1
    assert attrs.shape == (stack.shape[0], 6, 15)
    targets = tokens[:, 1:]
    correct = logits[:, :-1].gather(-1, targets[..., None])[..., 0]
    assert_close(attrs.sum(0), correct - model.b_U[targets], atol=1e-4, rtol=0)
    assert model.b_U.abs().min() > 0  # the bias really is subtracted


@pytest.mark.parametrize("norm", ["LN", None])
@torch.no_grad()
def test_attributions_sum_to_a_logit_difference(norm, random_norm_model):
    model, tokens = random_norm_model(norm), _tokens()
    logits, cache = model.run_with_cache(tokens)
    a, b = _tokens(seed=2), _tokens(seed=3)
    attrs = attribute(component_outputs(model, cache)[1], logit_difference_directions(model, a, b))
    diff = logits.gather(-1, a[..., None]) - logits.gather(-1, b[..., None])
    assert_close(attrs.sum(0), diff[..., 0] - (model.b_U[a] - model.b_U[b]), atol=1e-4, rtol=0)


@torch.no_grad()
def test_heads_match_transformer_lens(random_norm_model):
    """TL's apply_ln=True centres and divides by the cached scale but leaves out ln_final.w."""
    model, tokens = random_norm_model("LN"), _tokens()
    _, cache = model.run_with_cache(tokens)
    labels, stack = component_outputs(model, cache)
    heads = stack[[c.kind == "head" for c in labels]]
    tl_heads, tl_labels = cache.stack_head_results(layer=-1, apply_ln=True, return_labels=True)
    assert [c.label for c in labels if c.kind == "head"] == tl_labels
    w = model.ln_final.w
    assert_close(heads, tl_heads * w, atol=1e-5, rtol=0)
    directions = next_token_directions(model, tokens)
    assert_close(
        attribute(heads, directions), attribute(tl_heads, directions * w), atol=1e-4, rtol=0
    )
    assert not torch.allclose(attribute(heads, directions), attribute(tl_heads, directions))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attn_only", [False, True])
@torch.no_grad()
def test_direct_attributions_equal_the_stacked_components(norm, attn_only, random_norm_model):
    model, tokens = random_norm_model(norm, attn_only), _tokens()
    _, cache = model.run_with_cache(tokens)
    labels, stack = component_outputs(model, cache)
    assert ("mlp" in {c.kind for c in labels}) != attn_only
    directions = torch.randn(6, 10, 32)  # only the first 10 positions
    light = direct_attributions(model, cache, directions)
    assert light.shape == (len(labels), 6, 10)
    assert_close(light, attribute(stack, directions), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_table(random_norm_model):
    model, tokens = random_norm_model("LN"), _tokens(n=7)
    one = logit_attribution_table(model, tokens, batch_size=1, progress=False)
    many = logit_attribution_table(model, tokens.numpy(), batch_size=100, progress=False)
    assert list(one.columns) == ["component", "kind", "layer", "head", "mean", "std", "mean_abs"]
    assert one["component"].tolist() == [c.label for c in components(model)]
    assert one["component"].iloc[[0, 1, 2, 6, 7, -1]].tolist() == [
        "embed",
        "pos_embed",
        "L0H0",
        "L0.b_O",
        "L0.mlp_out",
        "ln_final.b",
    ]
    assert set(one["kind"]) == set(KINDS)
    assert one.dtypes["layer"] == one.dtypes["head"] == np.int64
    stats = ["mean", "std", "mean_abs"]
    np.testing.assert_allclose(one[stats], many[stats], atol=1e-5)

    logits = model(tokens)
    targets = tokens[:, 1:]
    correct = logits[:, :-1].gather(-1, targets[..., None])[..., 0] - model.b_U[targets]
    assert one["mean"].sum() == pytest.approx(float(correct.mean()), abs=1e-4)
    _, cache = model.run_with_cache(tokens)
    attrs = direct_attributions(model, cache, next_token_directions(model, tokens)).flatten(1)
    np.testing.assert_allclose(one["std"], attrs.std(1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one["mean_abs"], attrs.abs().mean(1).numpy(), rtol=1e-4, atol=1e-5)

    matrix = head_attribution_matrix(one)
    assert matrix.shape == (2, 4)
    assert matrix[1, 2] == one.set_index("component").loc["L1H2", "mean"]


@torch.no_grad()
def test_table_with_masked_directions(random_norm_model):
    """A directions_fn can attribute a logit difference at one position per sequence."""
    model, tokens = random_norm_model(None), _tokens()
    a, b = _tokens(seed=2), _tokens(seed=3)
    rows = torch.arange(6)

    def last_position_difference(model, batch):
        pick = rows[: len(batch)]  # batch_size covers the whole set here
        mask = torch.zeros(batch.shape, dtype=torch.bool)
        mask[:, -1] = True
        return logit_difference_directions(model, a[pick], b[pick]), mask

    table = logit_attribution_table(
        model, tokens, batch_size=6, directions_fn=last_position_difference, progress=False
    )
    assert "ln_bias" not in set(table["kind"])
    logits = model(tokens)[:, -1]
    diff = (
        logits[rows, a[:, -1]]
        - logits[rows, b[:, -1]]
        - (model.b_U[a[:, -1]] - model.b_U[b[:, -1]])
    )
    assert table["mean"].sum() == pytest.approx(float(diff.mean()), abs=1e-4)
