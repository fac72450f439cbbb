"""make_dataset, train_model and import_pretrained through their main([...])."""

import json

import numpy as np
import pandas as pd
import pytest

from mechflow.data.tokens import load_tokens
from mechflow.models.build import load_model
from mechflow.steps import import_pretrained, make_dataset, train_model

ARCH = {
    "n_layers": 1,
    "d_model": 16,
    "n_heads": 2,
    "d_head": 8,
    "n_ctx": 24,
    "d_vocab": 20,
    "attn_only": True,
}


def test_make_dataset_writes_the_requested_shape(train_tokens, tmp_path):
    assert load_tokens(train_tokens).shape == (40, 24)
    out = tmp_path / "probe.npy"
    spec = {"n_sequences": 5, "half_len": 6, "d_vocab": 20, "seed": 1}
    make_dataset.main(["--kind", "repeated_random", "--spec", json.dumps(spec), "--out", str(out)])
    assert load_tokens(out).shape == (5, 13)


def test_make_dataset_writes_ioi_sentences(tmp_path):
    from mechflow.experiments.ioi.prompts import PAD, Vocabulary

    out = tmp_path / "ioi.npy"
    spec = {"n_sequences": 50, "seq_len": 32, "held_out_templates": 3, "seed": 0}
    make_dataset.main(["--kind", "ioi", "--spec", json.dumps(spec), "--out", str(out)])
    rows, vocab = np.load(out), Vocabulary.build()
    assert rows.shape == (50, 32) and (rows[:, 0] == vocab.ids["<bos>"]).all()
    text = vocab.decode(rows[0]).split()
    assert text[-1] in vocab.words and text[-1][0].isupper()  # ends on the answer, a name
    assert (rows == vocab.ids[PAD]).any(axis=1).all()  # right-padded
    with pytest.raises(ValueError, match="d_vocab 7"):
        make_dataset.run("ioi", {**spec, "d_vocab": 7}, tmp_path / "bad.npy")


def test_make_dataset_names_bad_parameters(tmp_path):
    out = tmp_path / "x.npy"
    with pytest.raises(ValueError) as err:
        make_dataset.run("repeated_random", {"n_sequences": 5, "seq_len": 6}, out)
    message = str(err.value)
    assert message.startswith("dataset kind 'repeated_random': ")
    assert "unknown parameter(s) ['seq_len']" in message  # the key that does not belong
    assert "missing ['d_vocab', 'half_len', 'seed']" in message  # the keys it needs
    with pytest.raises(ValueError, match="dataset kind 'repeated_random': half_len must be >= 2"):
        make_dataset.run(
            "repeated_random", {"n_sequences": 5, "half_len": 1, "d_vocab": 9, "seed": 0}, out
        )
    with pytest.raises(ValueError, match="unknown dataset kind 'brackets'"):
        make_dataset.run("brackets", {}, out)
    assert not out.exists()


def test_train_model_writes_model_log_and_checkpoints(train_tokens, tmp_path):
    out = tmp_path / "model"
    training = {
        "steps": 20,
        "batch_size": 4,
        "lr": 0.01,
        "seed": 0,
        "log_every": 5,
        "checkpoints": [0, 10, 20],
    }
    train_model.main(
        [
            "--architecture",
            json.dumps(ARCH),
            "--training",
            json.dumps(training),
            "--tokens",
            str(train_tokens),
            "--threads",
            "1",
            "--out-dir",
            str(out),
        ]
    )
    meta = json.loads((out / "config.json").read_text())
    assert meta["architecture"]["n_layers"] == 1 and meta["source"] == "trained"
    assert len(meta["dataset"]["sha256"]) == 64 and meta["git_revision"]
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.columns) == ["step", "loss", "lr"] and log["step"].tolist() == [5, 10, 15, 20]
    assert not (out / "train_log.partial.csv").exists()  # the live log, once it is written
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_000000.safetensors",
        "step_000010.safetensors",
        "step_000020.safetensors",
    ]
    final = load_model(out)
    last = load_model(out, weights=out / "checkpoints/step_000020.safetensors")
    first = load_model(out, weights=out / "checkpoints/step_000000.safetensors")
    assert np.allclose(final.W_Q.detach(), last.W_Q.detach())
    assert not np.allclose(final.W_Q.detach(), first.W_Q.detach())


def test_train_model_refuses_tokens_outside_the_vocabulary(train_tokens, tmp_path):
    arch = {**ARCH, "d_vocab": 10}
    with pytest.raises(ValueError, match="d_vocab=10"):
        train_model.run(
            arch, {"steps": 2, "batch_size": 2}, train_tokens, tmp_path / "m", progress=False
        )
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_import_pretrained_fails_clearly_offline(tmp_path, caplog):
    """The job's log holds one paragraph saying where to put the weights, no traceback."""
    with pytest.raises(SystemExit) as exit_:
        import_pretrained.main(["--name", "gpt2", "--out-dir", str(tmp_path / "gpt2")])
    assert exit_.value.code == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "hf download gpt2" in errors[0].getMessage()
    assert not (tmp_path / "gpt2" / "model.safetensors").exists()
