"""Checkpoint discovery and per-checkpoint induction metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from mechflow.analysis.attention_scores import head_scores
from mechflow.analysis.losses import half_losses, icl_score, loss_by_position
from mechflow.data.induction import repeated_spans
from mechflow.data.tokens import load_tokens
from mechflow.experiments.induction.phase_change import METRICS, checkpoint_metrics
from mechflow.models.checkpoints import list_checkpoints


def test_list_checkpoints_sorts_by_step(tmp_path):
    for name in ("step_001000.safetensors", "step_000250.safetensors", "step_0.safetensors"):
        (tmp_path / name).touch()
    (tmp_path / "model.safetensors").touch()
    (tmp_path / "step_12.safetensors.tmp").touch()
    steps = [step for step, _ in list_checkpoints(tmp_path)]
    assert steps == [0, 250, 1000]
    with pytest.raises(FileNotFoundError, match="missing"):
        list_checkpoints(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no step_"):
        list_checkpoints(tmp_path / "empty")


def test_checkpoint_metrics_equal_the_separate_analyses(tiny_model, repeated_tokens_path, half_len):
    tokens = load_tokens(repeated_tokens_path)
    icl_tokens = repeated_spans(
        n_sequences=10, seq_len=24, d_vocab=20, span_len=(2, 5), spans_per_seq=2, seed=0
    )
    metrics = checkpoint_metrics(
        tiny_model, tokens, icl_tokens, half_len=half_len, batch_size=5, icl_early=3, icl_late=-1
    )
    assert list(metrics) == list(METRICS)
    with torch.no_grad():
        names = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
        _, cache = tiny_model.run_with_cache(
            torch.from_numpy(np.array(tokens, dtype=np.int64)), names_filter=names
        )
    layer0, layer1 = (head_scores(cache[name], half_len) for name in names)
    assert metrics["induction_score"] == pytest.approx(float(layer1["induction"].max()))
    assert metrics["previous_token_score"] == pytest.approx(float(layer0["previous_token"].max()))
    halves = half_losses(loss_by_position(tiny_model, tokens, 12, progress=False), half_len)
    assert_close(metrics["first_half_loss"], float(halves["first"]))
    assert_close(metrics["repeated_half_loss"], float(halves["second"]))
    icl_loss = loss_by_position(tiny_model, icl_tokens, 4, progress=False)
    assert_close(metrics["icl_score"], icl_score(icl_loss, 3, 23))
