"""Loss by position against a cross-entropy reference; half losses and the ICL score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mechflow.analysis.losses import (
    half_losses,
    icl_score,
    loss_by_position,
    resolve_position,
)
from mechflow.data.tokens import load_tokens


def test_loss_by_position_matches_cross_entropy(tiny_model, repeated_tokens_path, half_len):
    tokens = load_tokens(repeated_tokens_path)
    batch = torch.from_numpy(np.array(tokens, dtype=np.int64))
    with torch.no_grad():
        logits = tiny_model(batch)  # batch pos d_vocab
    reference = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch[:, 1:], reduction="none"
    ).mean(0)
    loss = loss_by_position(tiny_model, tokens, batch_size=5, progress=False)
    assert loss.shape == (2 * half_len,)
    assert_close(loss, reference.double(), rtol=1e-5, atol=1e-5)
    halves = half_losses(loss, half_len)
    assert_close(halves["first"], reference[:half_len].mean().double(), rtol=1e-5, atol=1e-5)
    assert_close(halves["second"], reference[half_len:].mean().double(), rtol=1e-5, atol=1e-5)


def test_half_losses_rejects_wrong_length():
    with pytest.raises(ValueError, match="half_len=4"):
        half_losses(torch.zeros(7), 4)


def test_icl_score_is_late_minus_early():
    loss = torch.arange(1, 11, dtype=torch.float64)  # predicted positions 1..10, loss = pos
    assert icl_score(loss, early=2, late=9) == pytest.approx(7.0)
    assert icl_score(loss, early=5, late=-1) == pytest.approx(10 - 5)
    assert resolve_position(-1, seq_len=11) == 10
    with pytest.raises(ValueError, match="outside"):
        icl_score(loss, early=0, late=5)
    with pytest.raises(ValueError, match="after"):
        icl_score(loss, early=8, late=3)
