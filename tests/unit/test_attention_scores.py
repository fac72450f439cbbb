"""Head scores from attention patterns: reference values, streaming, and hand-made heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from mechflow.analysis.attention_scores import SCORES, HeadScoreAccumulator, head_scores
from mechflow.analysis.inputs import check_repeated
from mechflow.data.induction import repeated_random
from mechflow.data.tokens import load_tokens

PATTERNS = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]


def _patterns(model, tokens):
    _, cache = model.run_with_cache(
        torch.from_numpy(np.array(tokens, dtype=np.int64)), names_filter=PATTERNS, return_type=None
    )
    return [cache[name] for name in PATTERNS]


def _reference(pattern, key_of_query, queries):
    """Mean of pattern[b, h, q, key_of_query(q)] over b and q, by explicit indexing."""
    q = torch.tensor(queries)
    k = key_of_query(q)
    return pattern[:, :, q, k].mean(dim=(0, 2)).double()  # head_index


def test_scores_match_explicit_indexing_and_lie_in_unit_interval(
    tiny_model, repeated_tokens_path, half_len
):
    seq_len = 1 + 2 * half_len
    second = list(range(half_len + 1, seq_len))
    for pattern in _patterns(tiny_model, load_tokens(repeated_tokens_path)):
        scores = head_scores(pattern, half_len)
        assert set(scores) == set(SCORES)
        assert_close(
            scores["previous_token"], _reference(pattern, lambda q: q - 1, range(1, seq_len))
        )
        assert_close(scores["duplicate_token"], _reference(pattern, lambda q: q - half_len, second))
        assert_close(scores["induction"], _reference(pattern, lambda q: q - half_len + 1, second))
        for values in scores.values():
            assert values.shape == (tiny_model.cfg.n_heads,)
            assert ((values >= 0) & (values <= 1)).all()


def test_streaming_over_batches_equals_whole_set(tiny_model, repeated_tokens_path, half_len):
    tokens = load_tokens(repeated_tokens_path)
    whole = head_scores(_patterns(tiny_model, tokens)[1], half_len)
    acc = HeadScoreAccumulator(half_len)
    for start in range(0, len(tokens), 5):  # uneven batches: 5, 5, 2
        acc.update(_patterns(tiny_model, tokens[start : start + 5])[1].numpy())
    for score in SCORES:
        assert_close(acc.result()[score], whole[score])


def _one_hot_pattern(seq_len, key_of_query):
    pattern = torch.zeros(seq_len, seq_len)
    for q in range(seq_len):
        pattern[q, key_of_query(q)] = 1.0
    return pattern


@pytest.mark.parametrize(
    ("layer", "kind", "expected"),
    [
        (1, "induction", {"induction": 1.0, "previous_token": 0.0, "duplicate_token": 0.0}),
        (0, "previous", {"induction": 0.0, "previous_token": 1.0, "duplicate_token": 0.0}),
        (1, "duplicate", {"induction": 0.0, "previous_token": 0.0, "duplicate_token": 1.0}),
    ],
)
def test_hand_made_heads_get_their_scores(tiny_model, half_len, layer, kind, expected):
    """Force head 0's pattern through a hook; the cached pattern must score as that head type."""
    seq_len = 1 + 2 * half_len
    keys = {
        # first half attends to itself; the repeated half to the token after the earlier copy
        "induction": lambda q: q if q <= half_len else q - half_len + 1,
        "previous": lambda q: max(q - 1, 0),
        "duplicate": lambda q: q if q <= half_len else q - half_len,
    }
    forced = _one_hot_pattern(seq_len, keys[kind])

    def force(pattern, hook):
        pattern = pattern.clone()
        pattern[:, 0] = forced
        return pattern

    name = PATTERNS[layer]
    tokens = torch.from_numpy(repeated_random(n_sequences=4, half_len=half_len, d_vocab=20, seed=3))
    with tiny_model.hooks(fwd_hooks=[(name, force)]):
        _, cache = tiny_model.run_with_cache(tokens.long(), names_filter=name, return_type=None)
    scores = head_scores(cache[name], half_len)
    for score, value in expected.items():
        assert scores[score][0].item() == pytest.approx(value, abs=1e-6), score


def test_wrong_pattern_shape_is_rejected(half_len):
    acc = HeadScoreAccumulator(half_len)
    with pytest.raises(ValueError, match="half_len=8"):
        acc.update(torch.zeros(2, 2, 2 * half_len, 2 * half_len))
    with pytest.raises(ValueError, match="no attention patterns"):
        acc.result()


def test_check_repeated_rejects_other_sequences(half_len):
    tokens = repeated_random(n_sequences=3, half_len=half_len, d_vocab=20, seed=0)
    check_repeated(tokens, half_len, "ok")
    with pytest.raises(ValueError, match="positions"):
        check_repeated(tokens, half_len + 1, "x.npy")
    broken = tokens.copy()
    broken[2, -1] = (broken[2, -1] % 19) + 1 if broken[2, -1] != 19 else 1
    with pytest.raises(ValueError, match="row 2"):
        check_repeated(broken, half_len, "x.npy")
