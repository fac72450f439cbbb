"""IOI prompts: named positions hold what they name, ABC corruption keeps everything but the names."""

from __future__ import annotations

import numpy as np
import pytest

from mechflow.experiments.ioi.prompts import (
    NAMES,
    PAD,
    PREFIXES,
    TEMPLATES,
    Vocabulary,
    corrupt_abc,
    make_prompts,
)


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.build()


def test_named_positions_hold_the_names(vocab):
    p = make_prompts(400, seed=0, vocabulary=vocab)
    rows = np.arange(len(p))
    assert (p.tokens[rows, p.positions["IO"]] == p.io).all()
    assert (p.tokens[rows, p.positions["S1"]] == p.s).all()
    assert (p.tokens[rows, p.positions["S2"]] == p.s).all()
    assert (p.io != p.s).all()
    assert (p.positions["S1+1"] == p.positions["S1"] + 1).all()
    end = p.positions["END"]
    assert (p.tokens[rows, end] == vocab.ids["to"]).sum() > 0.8 * len(p)  # most end in "to"
    after = np.minimum(end + 1, p.tokens.shape[1] - 1)
    assert ((p.tokens[rows, after] == vocab.ids[PAD]) | (end + 1 == p.tokens.shape[1])).all()
    abba = p.order == "ABBA"
    assert abba.sum() == len(p) // 2
    assert (p.positions["IO"][abba] < p.positions["S1"][abba]).all()
    assert (p.positions["IO"][~abba] > p.positions["S1"][~abba]).all()
    # position alone cannot find the answer: the END and IO positions vary
    assert len(set(end)) > 8 and len(set(p.positions["IO"])) > 8
    assert set(p.template) == set(range(len(TEMPLATES))) and len(TEMPLATES) >= 15
    assert set(p.prefix) == set(range(len(PREFIXES)))


def test_every_name_is_one_token_and_text_reads_back(vocab):
    assert all(len(vocab.encode([name])) == 1 for name in NAMES)
    p = make_prompts(2, seed=1, vocabulary=vocab)
    text = vocab.decode(p.tokens[0])
    assert (
        text.startswith("<bos>")
        and NAMES[0] not in ("",)
        and len(text.split()) == p.positions["END"][0] + 1
    )


def test_prompts_are_seeded(vocab):
    a, b = make_prompts(50, seed=3, vocabulary=vocab), make_prompts(50, seed=3, vocabulary=vocab)
    assert (a.tokens == b.tokens).all()
    other = make_prompts(50, seed=4, vocabulary=vocab, seq_len=a.tokens.shape[1] + 5)
    assert not (other.tokens[:, : a.tokens.shape[1]] == a.tokens).all()


def test_abc_changes_only_the_three_name_slots(vocab):
    p = make_prompts(300, seed=2, vocabulary=vocab)
    abc = corrupt_abc(p, seed=0, vocabulary=vocab)
    rows = np.arange(len(p))
    slots = [p.positions[k] for k in ("IO", "S1", "S2")]
    changed = abc != p.tokens
    expected = np.zeros_like(changed)
    for pos in slots:
        expected[rows, pos] = True
    assert (changed == expected).all()
    a, b, c = (abc[rows, pos] for pos in slots)
    assert ((a != b) & (b != c) & (a != c)).all()
    for name in (a, b, c):
        assert ((name != p.io) & (name != p.s)).all()


def test_held_out_templates_are_never_drawn(vocab):
    p = make_prompts(200, seed=0, vocabulary=vocab, template_ids=[0, 3])
    assert set(p.template) == {0, 3}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"names": ("Mary Ann", "John", "Bob")}, "one word"),
        ({"names": ("Mary", "John")}, "at least three"),
        ({"places": ("store", "store")}, "repeat"),
        (
            {"templates": ("[N1] went to the [PLACE] , [S] gave a [OBJECT] to",)},
            r"\[N2\] exactly once",
        ),
        ({"templates": ("[S] and [N1] met [N2] at the [PLACE] to",)}, "after"),
        ({"templates": ("[N1] and [N2] met , [S] saw",)}, None),
    ],
)
def test_bad_input_is_refused(vocab, kwargs, match):
    if match is None:  # a valid template whose words the vocabulary lacks
        with pytest.raises(KeyError, match="saw"):
            make_prompts(4, seed=0, vocabulary=vocab, **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        make_prompts(4, seed=0, vocabulary=vocab, **kwargs)


def test_seq_len_pads_and_refuses_too_short(vocab):
    p = make_prompts(10, seed=0, vocabulary=vocab, seq_len=40)
    assert p.tokens.shape == (10, 40)
    with pytest.raises(ValueError, match="seq_len 5"):
        make_prompts(10, seed=0, vocabulary=vocab, seq_len=5)
