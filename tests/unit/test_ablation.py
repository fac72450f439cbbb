"""Batched head ablation equals TransformerLens one-head-at-a-time ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from mechflow.analysis.ablation import (
    ablated_loss,
    all_head_ablations,
    head_ablation_losses,
    mean_head_outputs,
    repeated_half,
)
from mechflow.analysis.losses import half_losses, loss_by_position
from mechflow.data.tokens import load_tokens


def _reference_loss(model, batch, ablation, positions, mean_z):
    """One forward pass per head with run_with_hooks, the way one would write it by hand."""

    def hook(z, hook):
        z = z.clone()
        z[:, :, ablation.head] = (
            0.0 if ablation.kind == "zero" else mean_z[ablation.layer, :, ablation.head]
        )
        return z

    loss = model.run_with_hooks(
        batch,
        return_type="loss",
        loss_per_token=True,
        fwd_hooks=[(f"blocks.{ablation.layer}.attn.hook_z", hook)],
    )
    return loss[:, positions].mean(-1)


@torch.no_grad()
def test_batched_ablation_equals_one_head_at_a_time(tiny_model, repeated_tokens_path, half_len):
    tokens = load_tokens(repeated_tokens_path)
    batch = torch.from_numpy(np.array(tokens[:6], dtype=np.int64))
    mean_z = mean_head_outputs(tiny_model, tokens, batch_size=5, progress=False)
    ablations = all_head_ablations(tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    positions = repeated_half(half_len)
    batched = ablated_loss(tiny_model, batch, ablations, positions, mean_z)  # copy batch
    assert batched.shape == (len(ablations), 6)
    reference = torch.stack(
        [_reference_loss(tiny_model, batch, a, positions, mean_z) for a in ablations]
    )
    assert_close(batched, reference)
    clean = tiny_model(batch, return_type="loss", loss_per_token=True)[:, positions].mean(-1)
    assert (batched - clean).abs().max() > 1e-3  # ablations do change the loss


@torch.no_grad()
def test_mean_head_outputs_is_the_cache_mean(tiny_model, repeated_tokens_path):
    tokens = load_tokens(repeated_tokens_path)
    _, cache = tiny_model.run_with_cache(
        torch.from_numpy(np.array(tokens, dtype=np.int64)), return_type=None
    )
    mean_z = mean_head_outputs(tiny_model, tokens, batch_size=5, progress=False)
    for layer in range(tiny_model.cfg.n_layers):
        assert_close(mean_z[layer], cache[f"blocks.{layer}.attn.hook_z"].mean(0))


def test_head_ablation_losses_do_not_depend_on_chunking(tiny_model, repeated_tokens_path, half_len):
    tokens = load_tokens(repeated_tokens_path)
    clean, losses = head_ablation_losses(tiny_model, tokens, half_len, 12, progress=False)
    clean_chunked, chunked = head_ablation_losses(
        tiny_model, tokens, half_len, 5, ablations_per_pass=3, progress=False
    )
    expected_clean = half_losses(loss_by_position(tiny_model, tokens, 12, progress=False), half_len)
    assert clean == pytest.approx(float(expected_clean["second"]), abs=1e-5)
    assert abs(clean - clean_chunked) < 1e-5
    assert len(losses) == 2 * tiny_model.cfg.n_layers * tiny_model.cfg.n_heads
    for ablation, loss in losses.items():
        assert abs(loss - chunked[ablation]) < 1e-5, ablation
