"""Batched path patching equals the one-sender-at-a-time algorithm (ARENA's), run as a slow loop."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mechflow.patching import activation_patching
from mechflow.patching.path import Receiver, path_patching, path_patching_loop


@pytest.mark.parametrize("norm", ["LN", None])
@pytest.mark.parametrize(
    "receivers",
    [
        "resid_final",
        [Receiver(2, 1, "q")],
        [Receiver(1, 0, "k"), Receiver(2, 2, "v")],
        [Receiver(0, 1, "q"), Receiver(2, 0, "k")],  # layer-1 senders reach only the second
    ],
    ids=["final", "one_query", "key_and_value", "a_receiver_before_some_senders"],
)
def test_equals_the_one_sender_at_a_time_loop(norm, receivers, patching_model, patching_prompts):
    model = patching_model(norm, n_layers=3)
    clean, corrupted, metric = patching_prompts(5)
    expected = path_patching_loop(model, clean, corrupted, metric, receivers=receivers)
    for batch_size in (1, 7, 64):
        ours = path_patching(
            model, clean, corrupted, metric, receivers=receivers, batch_size=batch_size
        )
        assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_a_last_layer_head_has_only_its_direct_path(patching_model, patching_prompts):
    """To the logits, a last-layer head's path patching is patching its output (noising)."""
    model = patching_model("LN")
    clean, corrupted, metric = patching_prompts(6)
    paths = path_patching(model, clean, corrupted, metric)
    noised = activation_patching(model, corrupted, clean, "z", metric)  # corrupted into clean
    assert_close(paths[-1], noised[-1], atol=1e-4, rtol=1e-4)


def test_senders_without_a_path_score_the_clean_run_and_bad_receivers_are_named(
    patching_model, patching_prompts
):
    model = patching_model(None, n_layers=3)
    clean, corrupted, metric = patching_prompts(7)
    with torch.no_grad():
        clean_score = metric(model(clean))
    out = path_patching(model, clean, corrupted, metric, receivers=[Receiver(1, 0, "q")])
    assert_close(out[1:], torch.full_like(out[1:], float(clean_score)))
    assert not torch.allclose(out[0], torch.full_like(out[0], float(clean_score)))
    only = path_patching(model, clean, corrupted, metric, senders=[(0, 1)])
    assert torch.isnan(only).sum() == only.numel() - 1
    with pytest.raises(ValueError, match="'q', 'k' or 'v'"):
        Receiver(1, 0, "z")
    with pytest.raises(ValueError, match="no such head"):
        path_patching(model, clean, corrupted, metric, receivers=[Receiver(3, 0, "q")])
    with pytest.raises(ValueError, match=r"sender \(0, 9\)"):
        path_patching(model, clean, corrupted, metric, senders=[(0, 9)])
