"""The induction-paper analysis steps: artifact contracts and bad-input errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.testing import assert_close

from mechflow.artifacts import read_table

PATTERNS = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]


def _cache_store(model_dir, tokens_path, out):
    from mechflow.steps import cache_activations

    args = ["--model-dir", str(model_dir), "--tokens", str(tokens_path), "--batch-size", "4"]
    args += ["--dtype", "float32", "--compression", "none"]
    for hook in PATTERNS:
        args += ["--hook", hook]
    cache_activations.main([*args, "--device", "cpu", "--out", str(out)])
    return out


def test_score_heads_from_store_matches_the_model(
    tiny_model, tiny_model_dir, repeated_tokens_path, half_len, tmp_path
):
    from mechflow.analysis.attention_scores import head_scores
    from mechflow.data.tokens import load_tokens
    from mechflow.steps import score_heads

    store = _cache_store(tiny_model_dir, repeated_tokens_path, tmp_path / "acts.zarr")
    out = tmp_path / "head_scores.csv"
    score_heads.main(
        ["--store", str(store), "--model-dir", str(tiny_model_dir), "--tokens",
         str(repeated_tokens_path), "--half-len", str(half_len), "--batch-size", "5",
         "--out", str(out)]
    )  # fmt: skip
    df = read_table(out)
    assert list(df.columns) == ["model", "layer", "head", "score", "value"]
    assert len(df) == 2 * 2 * 3 and set(df.model) == {"model"}
    assert set(df.score) == {"previous_token", "duplicate_token", "induction"}
    assert df.value.between(0, 1).all()
    tokens = torch.from_numpy(np.array(load_tokens(repeated_tokens_path), dtype=np.int64))
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens, names_filter=PATTERNS, return_type=None)
    for layer, name in enumerate(PATTERNS):
        for score, values in head_scores(cache[name], half_len).items():
            got = df[(df.layer == layer) & (df.score == score)].sort_values("head").value
            assert_close(torch.tensor(got.to_numpy()), values, rtol=1e-5, atol=1e-6)


def test_score_heads_refuses_a_store_of_other_tokens(
    tiny_model_dir, repeated_tokens_path, half_len, tmp_path
):
    from mechflow.data.induction import repeated_random
    from mechflow.data.tokens import save_tokens
    from mechflow.steps import score_heads
    from mechflow.store.reader import ProvenanceMismatchError

    other = tmp_path / "other.npy"
    save_tokens(repeated_random(n_sequences=12, half_len=half_len, d_vocab=20, seed=9), other)
    store = _cache_store(tiny_model_dir, other, tmp_path / "acts.zarr")
    out = tmp_path / "head_scores.csv"
    with pytest.raises(ProvenanceMismatchError, match="dataset_sha256"):
        score_heads.run(store, tiny_model_dir, repeated_tokens_path, half_len, out, batch_size=64)
    assert not out.exists()


def test_measure_loss_by_position(tiny_model_dir, repeated_tokens_path, half_len, tmp_path):
    from mechflow.steps import measure_loss_by_position

    out = tmp_path / "loss_by_position.csv"
    measure_loss_by_position.main(
        ["--model-dir", str(tiny_model_dir), "--tokens", str(repeated_tokens_path),
         "--half-len", str(half_len), "--batch-size", "5", "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    df = read_table(out)
    assert list(df.columns) == ["model", "pos", "half", "loss"]
    assert df.pos.tolist() == list(range(1, 2 * half_len + 1))
    assert (df.half == "first").sum() == half_len and (df.half == "second").sum() == half_len
    assert df[df.half == "first"].pos.max() == half_len
    assert (df.loss > 0).all() and np.isfinite(df.loss).all()


def test_measure_loss_rejects_sequences_that_are_not_repeats(tiny_model_dir, tmp_path):
    from mechflow.data.tokens import save_tokens
    from mechflow.steps import measure_loss_by_position

    tokens = tmp_path / "random.npy"
    save_tokens(np.random.default_rng(0).integers(1, 20, size=(4, 17)), tokens)
    out = tmp_path / "loss.csv"
    with pytest.raises(ValueError, match="--tokens"):
        measure_loss_by_position.run(tiny_model_dir, tokens, 8, out, batch_size=64, device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        measure_loss_by_position.run(
            tiny_model_dir, tmp_path / "missing.npy", 8, out, batch_size=64
        )
    assert not out.exists()


def test_ablate_heads(tiny_model_dir, repeated_tokens_path, half_len, tmp_path):
    from mechflow.steps import ablate_heads

    out = tmp_path / "head_ablation.csv"
    ablate_heads.main(
        ["--model-dir", str(tiny_model_dir), "--tokens", str(repeated_tokens_path),
         "--half-len", str(half_len), "--batch-size", "5", "--ablations-per-pass", "3",
         "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    df = read_table(out)
    assert list(df.columns) == [
        "model", "layer", "head", "ablation", "loss", "clean_loss", "delta"
    ]  # fmt: skip
    assert len(df) == 2 * 2 * 2
    assert sorted(set(df.ablation)) == ["mean", "zero"]
    assert df.clean_loss.nunique() == 1
    assert_close(
        torch.tensor(df.delta.to_numpy()), torch.tensor((df.loss - df.clean_loss).to_numpy())
    )
    assert (df.delta.abs() > 0).any()


def test_score_composition(tiny_arch, tiny_model_dir, tmp_path):
    from mechflow.models.build import build_model, save_model
    from mechflow.steps import score_composition

    out = tmp_path / "composition.csv"
    args = ["--baseline-samples", "50", "--seed", "3", "--out", str(out)]
    score_composition.main(["--model-dir", str(tiny_model_dir), *args])
    df = read_table(out)
    assert list(df.columns) == [
        "model", "kind", "layer_from", "head_from", "layer_to", "head_to", "score", "baseline"
    ]  # fmt: skip
    assert len(df) == 3 * 2 * 2
    assert set(df.kind) == {"Q", "K", "V"}
    assert (df.layer_from < df.layer_to).all()
    assert df.score.between(0, 1).all() and df.baseline.nunique() == 1

    one_layer = tmp_path / "one_layer"
    save_model(build_model(replace(tiny_arch, n_layers=1), seed=0), one_layer)
    score_composition.main(["--model-dir", str(one_layer), *args])
    empty = pd.read_csv(out)
    assert empty.empty and list(empty.columns) == list(df.columns)


def test_score_copying(tiny_model_dir, tmp_path):
    from mechflow.steps import score_copying

    out = tmp_path / "copying.csv"
    score_copying.main(["--model-dir", str(tiny_model_dir), "--out", str(out)])
    df = read_table(out)
    assert list(df.columns) == ["model", "layer", "head", "score", "value"]
    assert len(df) == 2 * 2 * 2
    assert set(df.score) == {"eigen_ratio", "positive_fraction"}
    assert df.value.between(-1, 1).all()


def test_track_phase_change(tiny_model, tiny_model_dir, repeated_tokens_path, half_len, tmp_path):
    from mechflow.data.induction import repeated_spans
    from mechflow.data.tokens import save_tokens
    from mechflow.models.build import save_weights
    from mechflow.steps import track_phase_change

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    save_weights(tiny_model, ckpts / "step_000250.safetensors")
    with torch.no_grad():
        tiny_model.blocks[1].attn.W_Q.mul_(3.0)
    save_weights(tiny_model, ckpts / "step_000000.safetensors")
    icl = tmp_path / "icl.npy"
    save_tokens(
        repeated_spans(
            n_sequences=8, seq_len=24, d_vocab=20, span_len=(2, 5), spans_per_seq=2, seed=0
        ),
        icl,
    )
    out = tmp_path / "phase_change.csv"
    base = [
        "--model-dir", str(tiny_model_dir), "--checkpoints-dir", str(ckpts),
        "--eval-tokens", str(repeated_tokens_path), "--icl-tokens", str(icl),
        "--half-len", str(half_len), "--batch-size", "5", "--device", "cpu",
        "--icl-sequences", "6",
    ]  # fmt: skip
    track_phase_change.main([*base, "--icl-early", "5", "--icl-late", "-1", "--out", str(out)])
    df = read_table(out)
    assert list(df.columns) == ["model", "step", "metric", "value"]
    assert df.step.unique().tolist() == [0, 250]
    assert set(df.metric) == {
        "induction_score", "previous_token_score", "repeated_half_loss", "first_half_loss",
        "icl_score",
    }  # fmt: skip
    wide = df.pivot(index="step", columns="metric", values="value")
    assert wide.induction_score.between(0, 1).all()
    assert wide.induction_score[0] != wide.induction_score[250]  # the checkpoints differ

    with pytest.raises(ValueError, match="--icl-late"):
        track_phase_change.main([*base, "--icl-early", "10", "--icl-late", "4", "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        track_phase_change.run(
            tiny_model_dir, tmp_path / "nowhere", repeated_tokens_path, icl, half_len, out,
            batch_size=64, icl_early=5, icl_late=-1, icl_sequences=8,
        )  # fmt: skip
