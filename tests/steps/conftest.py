"""Fixtures several step tests share."""

import json

import pytest

from mechflow.steps import make_dataset


@pytest.fixture
def train_tokens(tmp_path):
    """40 sequences of 24 tokens (vocab 20) with repeated spans: a tiny LM training set."""
    out = tmp_path / "train.npy"
    spec = {
        "n_sequences": 40,
        "seq_len": 24,
        "d_vocab": 20,
        "span_len": [3, 6],
        "spans_per_seq": 1,
        "seed": 0,
    }
    make_dataset.main(["--kind", "repeated_spans", "--spec", json.dumps(spec), "--out", str(out)])
    return out
