"""Induction data: spans really repeat, at varying offsets; the probe is [BOS] + r + r."""

import numpy as np
import pytest

from mechflow.data.induction import BOS, repeated_random, repeated_spans
from mechflow.data.tokens import load_tokens, save_tokens


def _repeat_offsets(row, min_len):
    """Offsets d at which a run of >= min_len tokens equals the tokens d positions earlier."""
    offsets = set()
    for d in range(min_len, len(row)):
        same = row[d:] == row[:-d]
        run = 0
        for flag in same:
            run = run + 1 if flag else 0
            if run >= min_len:
                offsets.add(d)
                break
    return offsets


def test_repeated_spans_contain_repeats_at_varied_offsets():
    tokens = repeated_spans(
        n_sequences=50, seq_len=64, d_vocab=128, span_len=(4, 20), spans_per_seq=2, seed=0
    )
    assert tokens.shape == (50, 64) and tokens.dtype == np.int32
    assert (tokens[:, 0] == BOS).all() and (tokens[:, 1:] != BOS).all()
    offsets = [_repeat_offsets(row, 4) for row in tokens]
    assert sum(bool(o) for o in offsets) >= 45
    # A fixed period lets models cheat with positional look-back: offsets must vary.
    assert len(set().union(*offsets)) > 10


def test_repeated_spans_is_seeded():
    kw = dict(n_sequences=5, seq_len=32, d_vocab=50, span_len=(3, 8), spans_per_seq=1)
    np.testing.assert_array_equal(repeated_spans(**kw, seed=1), repeated_spans(**kw, seed=1))
    assert not np.array_equal(repeated_spans(**kw, seed=1), repeated_spans(**kw, seed=2))


def test_repeated_spans_rejects_spans_that_do_not_fit():
    with pytest.raises(ValueError, match="span_len"):
        repeated_spans(
            n_sequences=1, seq_len=10, d_vocab=50, span_len=(3, 8), spans_per_seq=1, seed=0
        )


def test_repeated_random_layout():
    tokens = repeated_random(n_sequences=4, half_len=7, d_vocab=30, seed=0)
    assert tokens.shape == (4, 15)
    assert (tokens[:, 0] == BOS).all()
    np.testing.assert_array_equal(tokens[:, 1:8], tokens[:, 8:])


def test_token_files_round_trip_and_refuse_bad_arrays(tmp_path):
    tokens = repeated_random(n_sequences=3, half_len=4, d_vocab=10, seed=0)
    save_tokens(tokens, tmp_path / "t.npy")
    np.testing.assert_array_equal(load_tokens(tmp_path / "t.npy"), tokens)
    np.save(tmp_path / "bad.npy", np.zeros(5))
    with pytest.raises(ValueError, match="bad.npy"):
        load_tokens(tmp_path / "bad.npy")
