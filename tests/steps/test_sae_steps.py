"""train_sae / evaluate_sae steps: CLI -> SAELens-layout SAE, training log, tidy metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mechflow.steps.evaluate_sae import main as evaluate_main
from mechflow.steps.train_sae import main as train_main

HOOK = "blocks.0.hook_resid_post"
N_SEQ, N_POS, D_VOCAB = 64, 24, 20


def bigram_tokens(n: int, seed: int) -> np.ndarray:
    """BOS, then a fixed successor of each token 90% of the time: learnable in a few steps."""
    succ = np.random.default_rng(0).permutation(np.arange(1, D_VOCAB))
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, N_POS), dtype=np.int32)
    tokens[:, 1] = rng.integers(1, D_VOCAB, n)
    for pos in range(2, N_POS):
        noise = rng.random(n) < 0.1
        tokens[:, pos] = np.where(noise, rng.integers(1, D_VOCAB, n), succ[tokens[:, pos - 1] - 1])
    return tokens


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny model trained on bigrams (so ablating its residual stream costs loss), its
    evaluation tokens, and a store of blocks.0.hook_resid_post written by cache_activations."""
    from mechflow.data.tokens import save_tokens
    from mechflow.models.build import build_model, save_model
    from mechflow.models.config import Architecture, TrainingConfig
    from mechflow.models.train import train
    from mechflow.runtime import seed_everything, set_threads
    from mechflow.steps.cache_activations import main as cache_main

    seed_everything(0)
    set_threads(1)
    root = tmp_path_factory.mktemp("sae_lab")
    arch = Architecture(
        n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=N_POS, d_vocab=D_VOCAB, attn_only=True
    )
    model = build_model(arch, seed=0)
    train(model, bigram_tokens(512, 1), TrainingConfig(steps=150, batch_size=32, lr=1e-2),
          progress=False)  # fmt: skip
    save_model(model, root / "model")
    save_tokens(bigram_tokens(N_SEQ, 2), root / "tokens.npy")
    store = root / "acts.zarr"
    cache_main(
        ["--model-dir", str(root / "model"), "--tokens", str(root / "tokens.npy"),
         "--hook", HOOK, "--out", str(store), "--batch-size", "16", "--chunk-size", "16",
         "--threads", "1", "--device", "cpu", "--dtype", "float32", "--compression", "none"]
    )  # fmt: skip
    return {"root": root, "model": root / "model", "tokens": root / "tokens.npy", "store": store}


RELU = {
    "architecture": "relu", "expansion_factor": 4, "l1_coefficient": 0.3, "batch_size": 256,
    "total_tokens": 120_000, "lr": 3e-3, "shuffle_buffer_tokens": 512, "log_every": 50,
}  # fmt: skip


def train_argv(lab, out, config, hook=HOOK, store=None):
    return [
        "--store", str(store or lab["store"]), "--hook", hook, "--sae-config", config,
        "--out", str(out), "--log", str(out.with_suffix(".csv")), "--threads", "1",
        "--device", "cpu",
    ]  # fmt: skip


def test_train_then_evaluate(lab, tmp_path):
    from mechflow.saes.saelens_format import load_sae

    out = tmp_path / "saes" / "relu_l1_0.3"
    train_main(train_argv(lab, out, json.dumps(RELU)))
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert not (tmp_path / "saes" / "relu_l1_0.3.ckpt.pt").exists()  # removed on success
    assert not list((tmp_path / "saes").glob("*.partial.csv"))  # the live log too
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["metadata"]["hook_name"] == HOOK
    assert (cfg["d_in"], cfg["d_sae"]) == (16, 64)
    assert cfg["metadata"]["mechflow"]["config"]["l1_coefficient"] == 0.3
    log = pd.read_csv(out.with_suffix(".csv"))
    assert log["step"].iloc[-1] == 120_000 // 256 and log["fvu"].iloc[-1] < 0.1
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    sae, _ = load_sae(out)
    assert sae.d_sae == 64

    metrics_path = tmp_path / "metrics.csv"
    evaluate_main(
        ["--sae", str(out), "--store", str(lab["store"]), "--model-dir", str(lab["model"]),
         "--tokens", str(lab["tokens"]), "--out", str(metrics_path), "--threads", "1",
         "--device", "cpu"]
    )  # fmt: skip
    table = pd.read_csv(metrics_path)
    assert list(table.columns) == ["sae", "hook", "architecture", "metric", "value"]
    assert set(table["sae"]) == {"relu_l1_0.3"} and set(table["architecture"]) == {"relu"}
    m = dict(zip(table["metric"], table["value"], strict=True))
    assert m["n_tokens"] == N_SEQ * (N_POS - 1)  # BOS left out, as in training
    assert m["fvu"] < 0.1 and 1 <= m["l0"] <= 64
    assert m["ce_zero_ablated"] > m["ce_clean"] + 1  # the hook matters to this model
    assert 0.5 < m["ce_recovered_zero"] <= 1.05
    assert 0.5 < m["ce_recovered_mean"] <= 1.05
    assert 0 <= m["frac_dead"] <= 1 and 0 <= m["frac_dense"] <= 1


def test_train_topk_from_a_config_file(lab, tmp_path):
    config = tmp_path / "topk.json"
    config.write_text(json.dumps(
        {"architecture": "topk", "d_sae": 32, "k": 4, "batch_size": 256, "total_tokens": 12_800,
         "hook_name": HOOK, "d_in": 16, "shuffle_buffer_tokens": 512}
    ))  # fmt: skip
    out = tmp_path / "topk"
    train_main(train_argv(lab, out, str(config)))
    cfg = json.loads((out / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["k"], cfg["d_sae"]) == ("topk", 4, 32)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"hook": "blocks.1.hook_resid_post"}, ValueError, "blocks.1.hook_resid_post.*no such hook"),
        ({"config": {**RELU, "architecture": "topk", "l1_coefficient": None, "k": 65}},
         ValueError, "sae.k: k=65 exceeds d_sae=64"),
        ({"config": {**RELU, "l1_coefficient": 0}}, ValueError, "sae.l1_coefficient: must be > 0"),
        ({"config": {**RELU, "l1": 1}}, ValueError, "unknown key.*'l1'"),
        ({"config": {**RELU, "hook_name": "blocks.0.hook_mlp_out"}}, ValueError, "differs from --hook"),
        ({"config": {**RELU, "d_in": 32}}, ValueError, "d_in is 32"),
        ({"store": "incomplete"}, Exception, "incomplete"),
        ({"store": "missing"}, Exception, "not an activation store"),
    ],
)  # fmt: skip
def test_train_sae_refuses_before_training(lab, tmp_path, change, error, match):
    import zarr

    from mechflow.store.reader import IncompleteStoreError

    store = lab["store"]
    if change.get("store") == "incomplete":
        import shutil

        store = tmp_path / "copy.zarr"
        shutil.copytree(lab["store"], store)
        zarr.open_group(store, mode="r+", zarr_format=3).attrs["complete"] = False
        error = IncompleteStoreError
    elif change.get("store") == "missing":
        store, error = tmp_path / "nowhere.zarr", IncompleteStoreError
    out = tmp_path / "sae"
    config = json.dumps(change.get("config", RELU))
    with pytest.raises(error, match=match):
        train_main(train_argv(lab, out, config, hook=change.get("hook", HOOK), store=store))
    assert not out.exists() and not out.with_suffix(".csv").exists()


def test_nan_activations_fail_and_write_nothing(lab, tmp_path):
    from mechflow.store import open_store
    from mechflow.store.writer import write_array_store

    # a sound store (manifest and all) whose activations are NaN: the trainer must refuse them
    source = open_store(lab["store"])
    store = tmp_path / "nan.zarr"
    write_array_store(
        store,
        {HOOK: np.full(source.array(HOOK).shape, np.nan, dtype=np.float32)},
        provenance=source.provenance,
        tokens=source.tokens(),
    )
    out = tmp_path / "sae"
    with pytest.raises(FloatingPointError):
        train_main(train_argv(lab, out, json.dumps(RELU), store=store))
    assert not out.exists() and not out.with_suffix(".csv").exists()
    # the loss path too (no input normalisation to trip over first)
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        train_main(
            train_argv(lab, out, json.dumps({**RELU, "normalize_activations": "none"}), store=store)
        )
    assert not out.exists()
    assert not list(tmp_path.glob("sae*.ckpt.pt"))


def test_evaluate_refuses_a_store_of_another_model(lab, tmp_path):
    from mechflow.models.build import build_model, save_model
    from mechflow.models.config import Architecture
    from mechflow.saes.relu import ReluSAE
    from mechflow.saes.saelens_format import save_sae

    other = tmp_path / "other_model"
    arch = Architecture(
        n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=N_POS, d_vocab=D_VOCAB, attn_only=True
    )
    save_model(build_model(arch, seed=5), other)
    sae_dir = save_sae(ReluSAE(16, 32), tmp_path / "sae", hook_name=HOOK)
    with pytest.raises(ValueError, match="cached from another model than --model-dir"):
        evaluate_main(
            ["--sae", str(sae_dir), "--store", str(lab["store"]), "--model-dir", str(other),
             "--tokens", str(lab["tokens"]), "--out", str(tmp_path / "m.csv")]
        )  # fmt: skip
    assert not (tmp_path / "m.csv").exists()
