"""An SAE on a toy model's hidden layer, end to end through the steps: the toy store reads like
any activation store, and the SAE finds the features the toy model packed into 2 dimensions."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mechflow.steps import cache_toy_activations, evaluate_toy_sae, train_sae, train_toy_model
from mechflow.store.reader import IncompleteStoreError, open_store

TOY = {
    "n_features": 5,
    "d_hidden": 2,
    "n_instances": 2,
    "feature_probability": [1.0, 0.03],
    "importance_decay": 0.8,
    "steps": 600,
    "batch_size": 256,
    "seed": 0,
}
SAE = {
    "architecture": "topk",
    "k": 1,
    "d_sae": 10,
    "total_tokens": 150_000,
    "batch_size": 1024,
    "lr": 0.01,
    "skip_bos": False,
}


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_sae")
    model_dir = root / "toy"
    train_toy_model.main(["--config", json.dumps(TOY), "--out-dir", str(model_dir)])
    store = root / "hook_hidden.zarr"
    cache_toy_activations.main(
        ["--model-dir", str(model_dir), "--instance", "-1", "--n-samples", "20000",
         "--seed", "0", "--out", str(store)]
    )  # fmt: skip
    return model_dir, store


def test_toy_store_is_an_activation_store(toy_store):
    model_dir, store = toy_store
    acts = open_store(store)
    assert acts.hooks == ["hook_hidden"] and acts.n_sequences == 20000
    assert acts.numpy("hook_hidden").shape == (20000, 1, 2)
    assert acts.provenance["instance"] == 1 and acts.provenance["feature_probability"] == 0.03
    assert acts.dims("hook_hidden")[0] == "seq"
    # sparse inputs: most hidden vectors are exactly zero
    assert (abs(acts.numpy("hook_hidden")).sum(axis=-1) == 0).mean() > 0.8


def test_bad_instance_is_refused(toy_store, tmp_path):
    model_dir, _ = toy_store
    with pytest.raises(ValueError, match="--instance 5"):
        cache_toy_activations.run(model_dir, tmp_path / "x.zarr", instance=5, n_samples=100, seed=0)
    with pytest.raises(IncompleteStoreError):
        open_store(tmp_path / "x.zarr")


def test_sae_recovers_the_toy_features(toy_store, tmp_path):
    model_dir, store = toy_store
    sae_dir = tmp_path / "topk_1"
    train_sae.main(
        ["--store", str(store), "--hook", "hook_hidden", "--sae-config", json.dumps(SAE),
         "--log", str(tmp_path / "log.csv"), "--out", str(sae_dir)]
    )  # fmt: skip
    out = tmp_path / "recovery.csv"
    evaluate_toy_sae.main(
        ["--sae", str(sae_dir), "--model-dir", str(model_dir), "--threshold", "0.9",
         "--represented", "0.5", "--out", str(out)]
    )  # fmt: skip
    recovery = pd.read_csv(out)
    represented = recovery[recovery.represented]
    assert len(represented) >= 4  # the sparse instance packs 4-5 features into 2 dims
    assert represented.recovered.mean() >= 0.9
    assert represented.best_latent.nunique() == len(represented)  # one latent per feature
