"""The logit lens equals TransformerLens's accumulated_resid(apply_ln=True) and, at the end, the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from mechflow.analysis.logit_lens import (
    METRICS,
    layer_log_probs,
    logit_lens_table,
    resid_hook_names,
)

NORMS = ["LN", None, "LNPre", "RMS"]


def _tokens(n=6, pos=16):
    return torch.randint(0, 50, (n, pos), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("norm", NORMS)
@torch.no_grad()
def test_lens_equals_accumulated_resid_and_the_model_at_the_end(norm, random_norm_model):
    model, tokens = random_norm_model(norm), _tokens()
    logits, cache = model.run_with_cache(tokens)
    lens = layer_log_probs(model, cache)  # layer batch pos d_vocab
    reference = model.unembed(cache.accumulated_resid(apply_ln=True)).log_softmax(-1)
    assert lens.shape == (3, *tokens.shape, 50)
    assert_close(lens, reference, atol=1e-4, rtol=0)
    assert_close(lens[-1], logits.log_softmax(-1), atol=1e-4, rtol=0)
    # the lens changes across layers, so the comparison above is not trivially true
    assert (lens[0] - lens[-1]).abs().max() > 0.1


@torch.no_grad()
def test_lens_renormalises_each_stream(random_norm_model):
    """Not the final layer's cached scale: an earlier stream gets its own mean and scale."""
    model, tokens = random_norm_model("LN"), _tokens()
    _, cache = model.run_with_cache(tokens)
    resid = cache["blocks.0.hook_resid_pre"]
    cached = cache.apply_ln_to_stack(resid[None], layer=-1)[0] * model.ln_final.w + model.ln_final.b
    lens = layer_log_probs(model, cache)[0]
    assert_close(lens, model.unembed(model.ln_final(resid)).log_softmax(-1))
    assert not torch.allclose(lens, model.unembed(cached).log_softmax(-1), atol=1e-3)


def _dense_metrics(model, tokens):
    """The table's metrics from every layer's full log-probs, written out directly."""
    _, cache = model.run_with_cache(tokens)
    lens = layer_log_probs(model, cache)[:, :, :-1]  # layer batch pos-1 d_vocab
    final, targets = lens[-1], tokens[:, 1:]
    rows = []
    for lp in lens:
        loss = -lp.gather(-1, targets[..., None]).mean()
        kl = (final.exp() * (final - lp)).sum(-1).mean()
        agree = (lp.argmax(-1) == final.argmax(-1)).double().mean()
        accuracy = (lp.argmax(-1) == targets).double().mean()
        rows.append([float(loss), float(kl), float(agree), float(accuracy)])
    return np.array(rows)


@pytest.mark.parametrize("norm", ["LN", None])
@torch.no_grad()
def test_table_metrics(norm, random_norm_model):
    model, tokens = random_norm_model(norm), _tokens()
    table = logit_lens_table(model, tokens.numpy(), batch_size=4, progress=False)
    assert list(table.columns) == ["layer", "hook", *METRICS]
    assert table["layer"].tolist() == [0, 1, 2]
    assert table["hook"].tolist() == resid_hook_names(2)
    assert table["hook"].tolist() == [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_resid_post",
    ]
    np.testing.assert_allclose(
        table[list(METRICS)].to_numpy(), _dense_metrics(model, tokens), atol=1e-5
    )
    final = table.iloc[-1]
    assert final["loss"] == pytest.approx(float(model(tokens, return_type="loss")), abs=1e-5)
    assert abs(final["kl_to_final"]) < 1e-6
    assert final["top1_agreement"] == 1.0
    assert table["kl_to_final"].iloc[0] > 1e-2


@torch.no_grad()
def test_table_does_not_depend_on_batching(random_norm_model):
    model, tokens = random_norm_model("LN"), _tokens(n=7)
    one = logit_lens_table(model, tokens, batch_size=1, progress=False)
    many = logit_lens_table(model, tokens.numpy(), batch_size=100, progress=False)
    assert one["hook"].tolist() == many["hook"].tolist()
    np.testing.assert_allclose(one[list(METRICS)], many[list(METRICS)], atol=1e-6)


def test_table_needs_a_next_token(random_norm_model):
    model = random_norm_model(None)
    with pytest.raises(ValueError, match="at least 2 positions"):
        logit_lens_table(model, _tokens(pos=1), batch_size=2, progress=False)
