"""Loss baselines against slow loops written from their definitions."""

import math

import numpy as np
import pytest

from mechflow.analysis.baselines import baseline_losses


def slow_losses(train, validation, d_vocab, alpha, lam):
    pairs = [(a, b) for row in train for a, b in zip(row[:-1], row[1:], strict=True)]
    targets = [b for _, b in pairs]
    unigram = [
        (targets.count(v) + alpha) / (len(targets) + alpha * d_vocab) for v in range(d_vocab)
    ]
    uni, bi = [], []
    for row in validation:
        for a, b in zip(row[:-1], row[1:], strict=True):
            seen = [y for x, y in pairs if x == a]
            conditional = (seen.count(b) + alpha) / (len(seen) + alpha * d_vocab)
            uni.append(-math.log(unigram[b]))
            bi.append(-math.log(lam * conditional + (1 - lam) * unigram[b]))
    return np.mean(uni), np.mean(bi)


def test_baselines_match_their_definitions():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 6, size=(5, 9))
    validation = rng.integers(0, 6, size=(3, 9))
    table = baseline_losses(train, validation, 6, alpha=0.5, lam=0.7).set_index("baseline")
    unigram, bigram = slow_losses(train.tolist(), validation.tolist(), 6, 0.5, 0.7)
    assert table.loc["uniform", "loss"] == pytest.approx(math.log(6))
    assert table.loc["unigram", "loss"] == pytest.approx(unigram, rel=1e-12)
    assert table.loc["bigram", "loss"] == pytest.approx(bigram, rel=1e-12)


def test_structure_is_found_where_it_exists():
    """A deterministic successor sequence: the bigram nearly solves it, the unigram cannot."""
    row = np.arange(200) % 10
    rows = np.stack([np.roll(row, k) for k in range(8)])
    table = baseline_losses(rows, rows[:2], 10).set_index("baseline")["loss"]
    assert table["bigram"] < 0.2 < math.log(10) - 0.01 < table["unigram"] + 0.01
    assert table["unigram"] <= table["uniform"] + 1e-9


def test_bad_tokens_are_refused():
    with pytest.raises(ValueError, match="validation token ids"):
        baseline_losses(np.zeros((2, 4), int), np.full((2, 4), 9), 5)
    with pytest.raises(ValueError, match="train tokens must be"):
        baseline_losses(np.zeros((2, 1), int), np.zeros((2, 4), int), 5)


def counted_losses(train, validation, d_vocab, alpha, lam):
    """The same definitions with a dict of the pairs seen: no d_vocab-sized table at all."""
    from collections import Counter

    prev, nxt = train[:, :-1].ravel().tolist(), train[:, 1:].ravel().tolist()
    pairs = Counter(zip(prev, nxt, strict=True))
    after = Counter(train[:, :-1].ravel().tolist())
    targets = Counter(train[:, 1:].ravel().tolist())
    n = train[:, 1:].size
    uni, bi = [], []
    held_out = validation[:, :-1].ravel().tolist(), validation[:, 1:].ravel().tolist()
    for a, b in zip(*held_out, strict=True):
        unigram = (targets[b] + alpha) / (n + alpha * d_vocab)
        conditional = (pairs[a, b] + alpha) / (after[a] + alpha * d_vocab)
        uni.append(-math.log(unigram))
        bi.append(-math.log(lam * conditional + (1 - lam) * unigram))
    return np.mean(uni), np.mean(bi)


def test_a_large_vocabulary_needs_no_dense_table():
    """GPT-2's 50257 tokens (a dense table: 20 GB of int64) and a million (8 TB): ids spread over
    the vocabulary, with a few pairs repeated so that seen and unseen pairs both score."""
    rng = np.random.default_rng(0)
    for d_vocab in (50_257, 1_000_003):
        common = rng.integers(0, d_vocab, size=20)  # a small working set, repeated
        train = np.where(rng.random((40, 64)) < 0.5, rng.choice(common, (40, 64)),
                         rng.integers(0, d_vocab, (40, 64)))  # fmt: skip
        validation = rng.choice(common, size=(6, 64))
        validation[:, ::7] = d_vocab - 1  # a token (probably) never seen in training
        table = baseline_losses(train, validation, d_vocab, alpha=0.1, lam=0.9)
        unigram, bigram = counted_losses(train, validation, d_vocab, 0.1, 0.9)
        losses = table.set_index("baseline")["loss"]
        assert losses["unigram"] == pytest.approx(unigram, rel=1e-12)
        assert losses["bigram"] == pytest.approx(bigram, rel=1e-12)
        assert losses["uniform"] == pytest.approx(math.log(d_vocab))
