"""What a training step shows while it runs: progress lines in its log (stderr not a terminal,
as in a Snakemake job), and a live loss table that grows, restarts on resume, and is removed."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import pandas as pd
import pytest

from mechflow import progress
from mechflow.steps import train_model, train_sae

ARCH = {
    "n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "n_ctx": 24, "d_vocab": 20,
    "attn_only": True,
}  # fmt: skip
TRAINING = {
    "steps": 20, "batch_size": 4, "lr": 0.01, "seed": 0, "log_every": 5,
    "checkpoints": [0, 10, 20],
}  # fmt: skip
# train_model's progress line: step, loss, tokens/s (4 sequences x 24 tokens per step)
LINE = re.compile(
    r"train model: step (\d+)/20 \(\d+%\) loss \d+\.\d{3} \| \d+(\.\d+)? tokens/s \| "
    r"\d+(\.\d)?s elapsed"
)


class Killed(Exception):
    pass


def no_terminal(monkeypatch) -> io.StringIO:
    """stderr redirected to a file, as Snakemake runs a job (whatever pytest was run from).
    Called in the test itself: pytest sets its own sys.stderr between setup and call."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    return stderr


def train_argv(tokens, out, training=TRAINING):
    return [
        "--architecture", json.dumps(ARCH), "--training", json.dumps(training),
        "--tokens", str(tokens), "--threads", "1", "--device", "cpu", "--out-dir", str(out),
    ]  # fmt: skip


def test_train_model_logs_progress_lines(train_tokens, tmp_path, monkeypatch, caplog):
    stderr = no_terminal(monkeypatch)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # a line at every step
    with caplog.at_level(logging.INFO, logger="mechflow"):
        train_model.main(train_argv(train_tokens, tmp_path / "model"))
    lines = [r.getMessage() for r in caplog.records if r.name == "mechflow.models.train"]
    steps = [int(m.group(1)) for line in lines if (m := LINE.fullmatch(line.split(", ETA")[0]))]
    assert steps == list(range(5, 21)), lines  # a loss from the first logged step (5) on
    assert "ETA" in lines[-2] and "ETA" not in lines[-1]  # the last line says it is done
    assert stderr.getvalue() == ""  # no tqdm bar off a terminal


def test_default_interval_logs_first_and_last_step(train_tokens, tmp_path, monkeypatch, caplog):
    no_terminal(monkeypatch)
    with caplog.at_level(logging.INFO, logger="mechflow.models.train"):
        train_model.main(train_argv(train_tokens, tmp_path / "model"))
    lines = [r.getMessage() for r in caplog.records if "train model: step" in r.getMessage()]
    assert [line.split(" (")[0] for line in lines] == [
        "train model: step 1/20",
        "train model: step 20/20",
    ]  # a 20-step run lasts well under LOG_EVERY_S
    assert LINE.fullmatch(lines[-1])


def logging_checkpoints(real_train, seen, kill_at=None):
    """train_model's train(), reading the live table at each checkpoint (and dying at one)."""

    def train(model, tokens, cfg, on_checkpoint=None, **kwargs):
        live = progress.live_path(kwargs["resume_dir"].parent / "train_log.csv")

        def on_checkpoint_reading(step, model):
            on_checkpoint(step, model)
            seen[step] = pd.read_csv(live)["step"].tolist()
            if step == kill_at:
                raise Killed

        return real_train(model, tokens, cfg, on_checkpoint=on_checkpoint_reading, **kwargs)

    return train


def test_live_table_grows_while_training_and_is_removed(train_tokens, tmp_path, monkeypatch):
    out = tmp_path / "model"
    seen = {}
    monkeypatch.setattr(train_model, "train", logging_checkpoints(train_model.train, seen))
    train_model.run(ARCH, TRAINING, train_tokens, out, device="cpu", progress=False)
    assert seen == {0: [], 10: [5, 10], 20: [5, 10, 15, 20]}
    assert not (out / "train_log.partial.csv").exists()
    assert pd.read_csv(out / "train_log.csv")["step"].tolist() == [5, 10, 15, 20]


def test_live_table_of_a_resumed_run_restarts_from_the_resumed_rows(
    train_tokens, tmp_path, monkeypatch
):
    out = tmp_path / "model"
    training = {**TRAINING, "steps": 30, "checkpoints": [0, 10, 20, 30]}
    killed = {}
    with monkeypatch.context() as patch:
        patch.setattr(train_model, "train", logging_checkpoints(train_model.train, killed, 20))
        with pytest.raises(Killed):
            train_model.run(ARCH, training, train_tokens, out, device="cpu", progress=False)
    live = out / "train_log.partial.csv"
    assert pd.read_csv(live)["step"].tolist() == [5, 10, 15, 20]  # left by the killed run
    resumed = {}
    monkeypatch.setattr(train_model, "train", logging_checkpoints(train_model.train, resumed))
    train_model.run(ARCH, training, train_tokens, out, device="cpu", progress=False)
    # resumed at step 10 (the last saved state): rows 5 and 10 again, then the new ones
    assert resumed == {20: [5, 10, 15, 20], 30: [5, 10, 15, 20, 25, 30]}
    assert not live.exists()


def test_train_sae_logs_progress_and_a_live_table(tmp_path, monkeypatch, caplog):
    import torch

    from mechflow.saes import training
    from mechflow.store.writer import write_array_store

    store = tmp_path / "acts.zarr"
    acts = torch.randn(64, 9, 8, generator=torch.Generator().manual_seed(0)).numpy()
    write_array_store(
        store,
        {"hook_x": acts},
        provenance={"model": "random", "model_hash": "m", "dataset_sha256": "d"},
    )
    log_path = tmp_path / "topk_train_log.csv"
    live = tmp_path / "topk_train_log.partial.csv"
    seen = []
    real_train_sae = training.train_sae

    def train_sae_reading(*args, **kwargs):
        def on_step(step):
            if step % 5 == 0:
                seen.append(len(pd.read_csv(live)))

        return real_train_sae(*args, on_step=on_step, **kwargs)

    monkeypatch.setattr(training, "train_sae", train_sae_reading)
    cfg = {"architecture": "topk", "d_sae": 16, "k": 2, "batch_size": 64, "total_tokens": 1280,
           "log_every": 5, "shuffle_buffer_tokens": 128}  # fmt: skip
    no_terminal(monkeypatch)
    with caplog.at_level(logging.INFO, logger="mechflow.saes.training"):
        train_sae.main(
            ["--store", str(store), "--hook", "hook_x", "--sae-config", json.dumps(cfg),
             "--out", str(tmp_path / "topk"), "--log", str(log_path), "--threads", "1",
             "--device", "cpu"]
        )  # fmt: skip
    assert seen == [1, 2, 3, 4]  # one row more every log_every steps
    assert not live.exists() and len(pd.read_csv(log_path)) == 4
    last = [r.getMessage() for r in caplog.records if "SAE topk: step" in r.getMessage()][-1]
    assert re.fullmatch(
        r"SAE topk: step 20/20 \(100%\) loss \S+ l0 2\.0 \| \d+ tokens/s \| .*", last
    )
