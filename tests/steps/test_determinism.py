"""Reproducible runs: train_model and cache_activations write the same bytes twice, on 1 or 2
torch threads, and a killed train_model, rerun, ends with the bytes of an uninterrupted one.

The runs that compare thread counts are fresh processes, as Snakemake runs them: MKL reads its
reproducibility mode at the process's first matrix product, long past in a pytest process. Two
processes run five jobs (an import of TransformerLens is most of a job's time).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mechflow.data.induction import repeated_spans
from mechflow.data.tokens import save_tokens
from mechflow.steps import cache_activations, train_model
from mechflow.store.reader import open_store

# Big enough that each half of deterministic mode is needed (checked by switching it off): on
# 2 threads without deterministic algorithms two runs differ (the embedding backward of 64 x 32
# tokens accumulates in parallel), without MKL_CBWR 1 and 2 threads differ (MKL splits each
# weight gradient's 2048-row reduction by threads). Sequences of 32 tokens, a length at which
# ATen's softmax backward is thread-invariant too (mechflow.models.train.thread_invariant_length).
ARCH = {
    "n_layers": 2, "d_model": 16, "n_heads": 2, "d_head": 8, "n_ctx": 32, "d_vocab": 32,
    "attn_only": True,
}  # fmt: skip
TRAINING = {
    "steps": 30, "batch_size": 64, "lr": 0.01, "weight_decay": 0.01, "warmup_steps": 5,
    "seed": 0, "log_every": 5, "checkpoints": [0, 10, 20, 30],
}  # fmt: skip
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]
# Metadata that says when and from which checkout a run was made, not what it computed.
RUN_METADATA = {"train_seconds", "git_revision", "created"}


def run_in_fresh_process(jobs: list[tuple[str, list[str]]]) -> None:
    """Run ``(step, argv)`` jobs one after another through each step's main(), in one process."""
    script = (
        "import json, sys\n"
        "from mechflow.steps import cache_activations, train_model\n"
        "steps = {'train_model': train_model, 'cache_activations': cache_activations}\n"
        "for step, argv in json.loads(sys.argv[1]):\n"
        "    steps[step].main(argv)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(jobs)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


def train_argv(tokens: Path, out: Path, threads: int) -> list[str]:
    return [
        "--architecture", json.dumps(ARCH), "--training", json.dumps(TRAINING),
        "--tokens", str(tokens), "--threads", str(threads), "--device", "cpu",
        "--out-dir", str(out),
    ]  # fmt: skip


def cache_argv(model: Path, tokens: Path, out: Path, threads: int) -> list[str]:
    return [
        "--model-dir", str(model), "--tokens", str(tokens), "--dtype", "float32",
        "--compression", "zstd", "--batch-size", "16", "--chunk-size", "16",
        "--threads", str(threads), "--device", "cpu", "--out", str(out),
        *(flag for hook in HOOKS for flag in ("--hook", hook)),
    ]  # fmt: skip


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def without_run_metadata(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in RUN_METADATA}


def assert_same_training(a: Path, b: Path) -> None:
    """Byte-identical weights, checkpoints and loss log; config.json equal but for run metadata."""
    fa, fb = files(a), files(b)
    assert sorted(fa) == sorted(fb)
    assert "resume/state.pt" not in fa  # removed once the run completed
    for name in fa:
        if name != "config.json":
            assert fa[name] == fb[name], f"{name} differs between {a.name} and {b.name}"
    ca, cb = (json.loads(f["config.json"]) for f in (fa, fb))
    assert without_run_metadata(ca) == without_run_metadata(cb)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "train.npy"
    spec = {"n_sequences": 256, "seq_len": 32, "d_vocab": 32, "span_len": (3, 8)}
    save_tokens(repeated_spans(**spec, spans_per_seq=2, seed=0), path)
    return path


@pytest.fixture(scope="module")
def runs(tokens, tmp_path_factory) -> Path:
    """The same training three times (twice on 2 threads, once on 1) and a cache of the first
    model on 2 threads and on 1, in two fresh processes."""
    root = tmp_path_factory.mktemp("runs")
    first = root / "first"
    run_in_fresh_process(
        [
            ("train_model", train_argv(tokens, first, 2)),
            ("train_model", train_argv(tokens, root / "one_thread", 1)),
            ("cache_activations", cache_argv(first, tokens, root / "threads2.zarr", 2)),
        ]
    )
    run_in_fresh_process(
        [
            ("train_model", train_argv(tokens, root / "second", 2)),
            ("cache_activations", cache_argv(first, tokens, root / "threads1.zarr", 1)),
        ]
    )
    return root


@pytest.mark.slow
def test_train_model_writes_the_same_bytes_twice_and_on_one_thread(runs, tokens, tmp_path):
    assert_same_training(runs / "first", runs / "second")
    assert_same_training(runs / "first", runs / "one_thread")
    # the comparison can fail: another seed changes every one of those files
    other = tmp_path / "seed1"
    train_model.run(ARCH, {**TRAINING, "seed": 1}, tokens, other, device="cpu", progress=False)
    first, seed1 = files(runs / "first"), files(other)
    for name in ("model.safetensors", "train_log.csv", "checkpoints/step_000030.safetensors"):
        assert first[name] != seed1[name], name


@pytest.mark.slow
def test_cache_activations_writes_the_same_bytes_twice_on_one_or_two_threads(
    runs, tokens, tmp_path
):
    stores = {threads: runs / f"threads{threads}.zarr" for threads in (2, 1)}
    a, b = files(stores[2]), files(stores[1])
    assert sorted(a) == sorted(b) and len(a) > 2 * len(HOOKS)
    for name in a:  # every chunk of every array, and each array's metadata
        if name != "zarr.json":
            assert a[name] == b[name], name
    attrs_a, attrs_b = (json.loads(f["zarr.json"])["attributes"] for f in (a, b))
    assert attrs_a["complete"] is True
    meta_a, meta_b = attrs_a.pop("mechflow"), attrs_b.pop("mechflow")
    assert attrs_a == attrs_b
    assert without_run_metadata(meta_a) == without_run_metadata(meta_b)
    assert RUN_METADATA & set(meta_a)  # there was something to set aside
    # the comparison can fail: another model's activations differ
    other = tmp_path / "seed1"
    train_model.run(ARCH, {**TRAINING, "seed": 1}, tokens, other, device="cpu", progress=False)
    cache_activations.run(
        other, tokens, HOOKS, tmp_path / "seed1.zarr", dtype="float32", compression="zstd",
        batch_size=16, chunk_size=16, device="cpu", progress=False,
    )  # fmt: skip
    mine, another = open_store(stores[2]), open_store(tmp_path / "seed1.zarr")
    for hook in HOOKS:
        assert mine.numpy(hook).tobytes() != another.numpy(hook).tobytes(), hook


class Killed(Exception):
    """Stands in for SIGKILL (or a node lost) at a checkpoint step."""


def killed_at(step_to_die: int, real_train):
    """train_model's train(), dying right after it wrote the weights of ``step_to_die``."""

    def train(model, tokens, cfg, on_checkpoint=None, **kwargs):
        def on_checkpoint_then_die(step, model):
            on_checkpoint(step, model)
            if step == step_to_die:
                raise Killed

        return real_train(model, tokens, cfg, on_checkpoint=on_checkpoint_then_die, **kwargs)

    return train


def test_resumed_train_model_equals_an_uninterrupted_one(tokens, tmp_path, monkeypatch, caplog):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_model.run(ARCH, TRAINING, tokens, straight, device="cpu", progress=False)

    with monkeypatch.context() as patch:
        patch.setattr(train_model, "train", killed_at(20, train_model.train))
        with pytest.raises(Killed):
            train_model.run(ARCH, TRAINING, tokens, resumed, device="cpu", progress=False)
    assert (resumed / "resume" / "state.pt").is_file()  # saved at step 10
    assert not (resumed / "model.safetensors").exists()
    shutil.rmtree(resumed / "checkpoints")  # what Snakemake does to a failed job's outputs

    with caplog.at_level(logging.INFO, logger="mechflow.models.train"):
        train_model.run(ARCH, TRAINING, tokens, resumed, device="cpu", progress=False)
    assert "at step 10 of 30" in caplog.text  # it resumed, rather than starting over
    assert_same_training(straight, resumed)


def test_resume_state_of_another_config_is_not_used(tokens, tmp_path, monkeypatch, caplog):
    out = tmp_path / "model"
    with monkeypatch.context() as patch:
        patch.setattr(train_model, "train", killed_at(20, train_model.train))
        with pytest.raises(Killed):
            train_model.run(ARCH, TRAINING, tokens, out, device="cpu", progress=False)
    other = {**TRAINING, "lr": 0.02, "checkpoints": [0, 15, 30]}
    with caplog.at_level(logging.INFO, logger="mechflow.models"):  # train and its checkpoints
        train_model.run(ARCH, other, tokens, out, device="cpu", progress=False)
    assert "another run" in caplog.text and "resuming" not in caplog.text
    straight = tmp_path / "straight"
    train_model.run(ARCH, other, tokens, straight, device="cpu", progress=False)
    assert_same_training(straight, out)  # the killed run's checkpoints 10 and 20 are gone
