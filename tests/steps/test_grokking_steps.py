"""Grokking steps through their ``main([...])``: a tiny training run that memorises, the Fourier
analyses on a planted model whose key frequencies are known, progress measures, checks, plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mechflow.artifacts import read_json
from mechflow.experiments.grokking.inputs import CHECKPOINT_UNIT, SPLIT_FILE
from mechflow.experiments.grokking.modular_addition import task_architecture, train_test_split
from mechflow.models.build import build_model, save_model
from mechflow.models.checkpoints import checkpoint_name
from mechflow.steps import (
    analyze_embedding_fourier,
    analyze_neurons_fourier,
    check_grokking,
    measure_progress,
    plot_figure,
    train_grokking_model,
)

P = 17
ARCH = {
    "n_layers": 1,
    "d_model": 32,
    "n_heads": 2,
    "d_head": 16,
    "d_mlp": 64,
    "normalization_type": None,
}


def train_args(out_dir, modulus=P, fraction=0.5, epochs=150, checkpoints=None):
    training = {
        "epochs": epochs,
        "lr": 0.01,
        "weight_decay": 1.0,
        "log_every": 10,
        "checkpoints": checkpoints if checkpoints is not None else list(range(0, epochs + 1, 25)),
    }
    return [
        "--modulus", str(modulus),
        "--train-fraction", str(fraction),
        "--data-seed", "0",
        "--architecture", json.dumps(ARCH),
        "--training", json.dumps(training),
        "--device", "cpu",
        "--out-dir", str(out_dir),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grok") / "tiny_run"
    torch.set_num_threads(1)
    train_grokking_model.main(train_args(out))
    return out


def test_tiny_run_memorises_and_records_everything(tiny_run):
    log = pd.read_csv(tiny_run / "train_log.csv")
    assert not (tiny_run / "train_log.partial.csv").exists()  # the live log, once it is written
    assert log.epoch.iloc[-1] == 150
    assert log.train_accuracy.iloc[-1] == 1.0, "full-batch AdamW must fit 144 training pairs"
    assert log.train_loss.iloc[-1] < 0.05 < log.train_loss.iloc[0]
    # memorisation, not (yet) generalisation: the held-out pairs are far from solved
    assert log.test_loss.iloc[-1] > 10 * log.train_loss.iloc[-1]
    saved = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert saved == [checkpoint_name(e, CHECKPOINT_UNIT) for e in range(0, 151, 25)]
    meta = read_json(tiny_run / "config.json")
    assert meta["task"] == {"modulus": P, "train_fraction": 0.5, "data_seed": 0}
    assert meta["hooked_transformer_config"]["d_vocab"] == P + 1
    assert meta["hooked_transformer_config"]["d_vocab_out"] == P
    with np.load(tiny_run / SPLIT_FILE) as split:
        np.testing.assert_array_equal(split["train"], train_test_split(P, 0.5, 0)[0])


@pytest.mark.parametrize(
    "modulus, fraction, match",
    [(15, 0.5, "modulus must be an odd prime"), (P, 1.5, "train_fraction must lie in")],
)
def test_bad_task_is_refused_before_anything_is_written(tmp_path, modulus, fraction, match):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train_grokking_model.main(train_args(out, modulus=modulus, fraction=fraction))
    assert not out.exists()


def planted_model_dir(tmp_path, keys=(3, 7), per_key=6):
    """Embedding on ``keys`` only and neurons ReLU(cos(w_k a + φ) + cos(w_k b + φ)): a planted
    Fourier solution whose key frequencies are known."""
    d_model = 2 * len(keys)
    arch = task_architecture(
        {"n_layers": 1, "d_model": d_model, "n_heads": 1, "d_head": d_model,
         "d_mlp": per_key * len(keys), "normalization_type": None},
        P,
    )  # fmt: skip
    model = build_model(arch, seed=0)
    params = {name for name, _ in model.named_parameters() if name != "unembed.W_U"}
    state = {k: torch.zeros_like(v) if k in params else v for k, v in model.state_dict().items()}
    x = torch.arange(P, dtype=torch.float64)
    rng = np.random.default_rng(0)
    for i, k in enumerate(keys):
        state["embed.W_E"][:P, 2 * i] = torch.cos(2 * math.pi * k * x / P).float()
        state["embed.W_E"][:P, 2 * i + 1] = torch.sin(2 * math.pi * k * x / P).float()
        for j in range(per_key):
            phase = rng.uniform(0, 2 * math.pi)
            state["blocks.0.mlp.W_in"][2 * i, i * per_key + j] = math.cos(phase)
            state["blocks.0.mlp.W_in"][2 * i + 1, i * per_key + j] = -math.sin(phase)
    # W_Q = W_K = 0: uniform attention over `a b =`; W_V, W_O pass 3x the mean = E[a] + E[b]
    state["blocks.0.attn.W_V"][0] = torch.eye(d_model)
    state["blocks.0.attn.W_O"][0] = 3 * torch.eye(d_model)
    model.load_state_dict(state)
    out = tmp_path / "planted"
    save_model(model, out, extra={"task": {"modulus": P, "train_fraction": 0.5, "data_seed": 0}})
    train, test = train_test_split(P, 0.5, 0)
    np.savez(out / SPLIT_FILE, train=train, test=test)
    return out


def test_fourier_analyses_find_the_planted_key_frequencies(tmp_path):
    model_dir = planted_model_dir(tmp_path)
    emb = tmp_path / "embedding_fourier.csv"
    analyze_embedding_fourier.main(["--model-dir", str(model_dir), "--out", str(emb)])
    table = pd.read_csv(emb)
    shares = table[table.component == "cos"].set_index("frequency")["share"]
    assert shares[[3, 7]].sum() == pytest.approx(1.0, abs=1e-6)
    out = tmp_path / "tables"
    analyze_neurons_fourier.main(
        ["--model-dir", str(model_dir), "--embedding", str(emb), "--min-neuron-share", "0.05",
         "--min-fraction", "0.5", "--out-dir", str(out)]
    )  # fmt: skip
    keys = pd.read_csv(out / "key_frequencies.csv")
    assert keys.frequency.tolist() == [3, 7]
    assert keys.n_neurons.tolist() == [6, 6]
    assert keys.key_fraction.iloc[0] > 0.9
    maps = pd.read_csv(out / "activation_maps.csv")
    assert set(maps.kind) == {"head", "neuron"}
    assert len(maps) == (1 + 2) * P * P  # every head + one neuron per key frequency
    plot = tmp_path / "maps.png"
    plot_figure.main(
        ["--figure", "grokking.activation_maps", "--table", f"table={out / 'activation_maps.csv'}",
         "--out", str(plot)]
    )  # fmt: skip
    plot_figure.main(
        ["--figure", "grokking.embedding_fourier", "--table", f"table={emb}",
         "--table", f"key_frequencies={out / 'key_frequencies.csv'}",
         "--out", str(tmp_path / "emb.png")]
    )  # fmt: skip
    assert plot.stat().st_size > 0 and (tmp_path / "emb.svg").stat().st_size > 0


def test_progress_measures_and_checks_on_the_tiny_run(tiny_run, tmp_path):
    keys = tmp_path / "key_frequencies.csv"
    pd.DataFrame({"frequency": [1, 2], "embedding_share": [0.1, 0.1]}).to_csv(keys, index=False)
    progress, phases = tmp_path / "progress.csv", tmp_path / "phases.csv"
    measure_progress.main(
        ["--model-dir", str(tiny_run), "--key-frequencies", str(keys), "--first-epoch", "0",
         "--out", str(progress), "--phases", str(phases)]
    )  # fmt: skip
    wide = pd.read_csv(progress).pivot(index="epoch", columns="metric", values="value")
    assert wide.index.tolist() == list(range(0, 151, 25))
    log = pd.read_csv(tiny_run / "train_log.csv").set_index("epoch")
    # the checkpoint measures agree with the loss logged during training at the same epochs
    np.testing.assert_allclose(wide.loc[150, "train_loss"], log.loc[150, "train_loss"], rtol=1e-3)
    np.testing.assert_allclose(wide.loc[150, "test_loss"], log.loc[150, "test_loss"], rtol=1e-3)
    assert (wide.weight_norm > 0).all()
    ph = pd.read_csv(phases).set_index("phase")
    assert ph.loc["memorisation", "end_epoch"] <= 150
    assert math.isnan(ph.loc["cleanup", "end_epoch"])  # the tiny run never generalises
    checks = tmp_path / "checks.csv"
    args = ["--progress", str(progress), "--phases", str(phases),
            "--key-frequencies", str(keys), "--out", str(checks)]  # fmt: skip
    check_grokking.main(args)
    assert (
        not pd.read_csv(checks).set_index("check").loc["memorised_well_before_grokking", "passed"]
    )
    with pytest.raises(SystemExit) as err:
        check_grokking.main([*args, "--enforce"])
    assert err.value.code == 1
    assert checks.exists()  # the evidence is kept
    plot_figure.main(
        ["--figure", "grokking.grokking_curves", "--table", f"log={tiny_run / 'train_log.csv'}",
         "--table", f"phases={phases}", "--out", str(tmp_path / "curves.png")]
    )  # fmt: skip
    plot_figure.main(
        ["--figure", "grokking.progress_measures", "--table", f"table={progress}",
         "--table", f"phases={phases}", "--out", str(tmp_path / "pm.png")]
    )  # fmt: skip
    assert (tmp_path / "curves.svg").exists() and (tmp_path / "pm.svg").exists()


def test_progress_refuses_a_range_the_checkpoints_do_not_cover(tiny_run, tmp_path):
    keys = tmp_path / "key_frequencies.csv"
    pd.DataFrame({"frequency": [1]}).to_csv(keys, index=False)
    with pytest.raises(ValueError, match="do not cover"):
        measure_progress.run(
            tiny_run, keys, tmp_path / "p.csv", tmp_path / "ph.csv", first_epoch=0, last_epoch=140
        )
    assert not (tmp_path / "p.csv").exists()
