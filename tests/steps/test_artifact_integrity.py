"""Weights a step reads are refused by path when truncated or altered, and every artifact the
steps write gets the mode the umask gives (safetensors alone writes 0600)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from mechflow.artifacts import DamagedArtifactError, load_safetensors
from mechflow.data.tokens import save_tokens

ARCH = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "n_ctx": 24, "d_vocab": 20,
        "attn_only": True}  # fmt: skip
HOOK = "blocks.0.hook_resid_post"
TOY = {"n_features": 5, "d_hidden": 2, "n_instances": 2, "feature_probability": [1.0, 0.1],
       "importance_decay": 0.8, "steps": 20, "batch_size": 64, "log_every": 10, "seed": 0}  # fmt: skip
SAE = {"architecture": "relu", "expansion_factor": 2, "l1_coefficient": 0.3, "batch_size": 64,
       "total_tokens": 1024, "lr": 3e-3, "shuffle_buffer_tokens": 256, "log_every": 4,
       "checkpoint_every": 4}  # fmt: skip


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # in the last tensor's data: safetensors itself cannot tell
    path.write_bytes(bytes(data))


@pytest.fixture
def tokens_path(tmp_path):
    from mechflow.data.induction import repeated_random

    path = tmp_path / "tokens.npy"
    save_tokens(repeated_random(n_sequences=16, half_len=8, d_vocab=20, seed=0), path)
    return path


# --- refused with the path ---------------------------------------------------------------------
def test_load_safetensors_names_the_file(tmp_path):
    import torch

    from mechflow.artifacts import save_safetensors

    path = tmp_path / "w.safetensors"
    digest = save_safetensors({"w": torch.arange(64.0)}, path)
    assert load_safetensors(path, sha256=digest)["w"].shape == (64,)
    flip_byte(path)
    with pytest.raises(DamagedArtifactError, match=f"{path}: sha256 .* differs"):
        load_safetensors(path, sha256=digest)
    for keep in (0.0, 0.05, 0.5, 0.99):
        truncate(path, keep)
        with pytest.raises(DamagedArtifactError, match=f"{path}: not a readable safetensors"):
            load_safetensors(path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none.safetensors")):
        load_safetensors(tmp_path / "none.safetensors")


def test_truncated_model_weights_refused_by_the_step(tiny_model_dir, tokens_path, tmp_path):
    from mechflow.steps.cache_activations import main as cache_main

    weights = tiny_model_dir / "model.safetensors"
    truncate(weights)
    out = tmp_path / "acts.zarr"
    # config.json records its sha256, checked before safetensors reads the file
    with pytest.raises(DamagedArtifactError, match=f"{weights}: sha256 .* rerun the step"):
        cache_main(["--model-dir", str(tiny_model_dir), "--tokens", str(tokens_path),
                    "--hook", HOOK, "--dtype", "float32", "--compression", "none",
                    "--threads", "1", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert not out.exists()


def test_altered_model_weights_refused(tiny_model_dir):
    from mechflow.models.build import load_model

    weights = tiny_model_dir / "model.safetensors"
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert len(config["weights_sha256"]) == 64
    flip_byte(weights)  # same size, valid header
    with pytest.raises(DamagedArtifactError, match=f"{weights}: sha256"):
        load_model(tiny_model_dir)
    del config["weights_sha256"]  # a model saved before the record: loads as before
    (tiny_model_dir / "config.json").write_text(json.dumps(config))
    load_model(tiny_model_dir)


def test_truncated_checkpoint_refused(tiny_model, tiny_model_dir):
    from mechflow.models.build import load_model, save_weights
    from mechflow.models.checkpoints import checkpoint_name, iter_checkpoint_models

    ckpts = [tiny_model_dir / "checkpoints" / checkpoint_name(i) for i in (0, 10)]
    for path in ckpts:
        save_weights(tiny_model, path)
    assert len([m for _, m in iter_checkpoint_models(tiny_model_dir, list(enumerate(ckpts)))]) == 2
    truncate(ckpts[1], 0.9)
    with pytest.raises(DamagedArtifactError, match=str(ckpts[1])):
        list(iter_checkpoint_models(tiny_model_dir, list(enumerate(ckpts))))
    with pytest.raises(DamagedArtifactError, match=str(ckpts[1])):
        load_model(tiny_model_dir, weights=ckpts[1])


@pytest.mark.parametrize("damage", [truncate, flip_byte], ids=["truncated", "altered"])
def test_damaged_sae_weights_refused(tmp_path, damage):
    from mechflow.saes import build_sae
    from mechflow.saes.config import SAEConfig
    from mechflow.saes.saelens_format import load_sae, save_sae

    cfg = SAEConfig.from_dict({"architecture": "relu", "d_in": 16, "hook_name": HOOK,
                               "expansion_factor": 2, "l1_coefficient": 1.0})  # fmt: skip
    out = save_sae(build_sae(cfg), tmp_path / "sae", hook_name=HOOK)
    digest = json.loads((out / "cfg.json").read_text())["metadata"]["mechflow"]["weights_sha256"]
    assert len(digest) == 64
    load_sae(out)
    damage(out / "sae_weights.safetensors")
    with pytest.raises(DamagedArtifactError, match=str(out / "sae_weights.safetensors")):
        load_sae(out)


@pytest.mark.parametrize("damage", [truncate, flip_byte], ids=["truncated", "altered"])
def test_damaged_toy_model_refused(tmp_path, damage):
    from mechflow.experiments.superposition.toy_model import (
        ToyModel,
        ToyModelConfig,
        load_toy_model,
        save_toy_model,
    )

    cfg = ToyModelConfig.from_dict(TOY)
    weights = save_toy_model(ToyModel.from_config(cfg), cfg, tmp_path / "toy")
    load_toy_model(tmp_path / "toy")
    damage(weights)
    with pytest.raises(DamagedArtifactError, match=str(weights)):
        load_toy_model(tmp_path / "toy")


# --- one mode for every artifact ---------------------------------------------------------------
@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_every_artifact_gets_the_umask_mode(tmp_path, tokens_path, umask_027):
    """Each kind of artifact, written by its step: model, checkpoints, store, SAE, toy model."""
    from mechflow.steps import (
        cache_activations,
        cache_toy_activations,
        train_model,
        train_sae,
        train_toy_model,
    )

    training = {"steps": 4, "batch_size": 4, "lr": 0.01, "seed": 0, "log_every": 2,
                "checkpoints": [0, 4]}  # fmt: skip
    model = tmp_path / "model"
    train_model.main(["--architecture", json.dumps(ARCH), "--training", json.dumps(training),
                      "--tokens", str(tokens_path), "--threads", "1", "--out-dir", str(model)])  # fmt: skip
    store = tmp_path / "acts.zarr"
    cache_activations.main(["--model-dir", str(model), "--tokens", str(tokens_path),
                            "--hook", HOOK, "--dtype", "float32", "--compression", "zstd",
                            "--threads", "1", "--device", "cpu", "--out", str(store)])  # fmt: skip
    sae = tmp_path / "sae"
    train_sae.main(["--store", str(store), "--hook", HOOK, "--sae-config", json.dumps(SAE),
                    "--out", str(sae), "--log", str(tmp_path / "sae.csv"), "--threads", "1",
                    "--device", "cpu"])  # fmt: skip
    toy = tmp_path / "toy"
    train_toy_model.main(["--config", json.dumps(TOY), "--out-dir", str(toy)])
    toy_store = tmp_path / "toy.zarr"
    cache_toy_activations.main(["--model-dir", str(toy), "--instance", "-1", "--n-samples",
                                "100", "--seed", "0", "--out", str(toy_store)])  # fmt: skip

    artifacts = [model, store, sae, toy, toy_store, tmp_path / "sae.csv"]
    files = [p for a in artifacts for p in ([a] if a.is_file() else a.rglob("*")) if p.is_file()]
    kinds = {p.name for p in files}
    assert {"model.safetensors", "config.json", "step_000004.safetensors", "manifest.json",
            "sae_weights.safetensors", "cfg.json", "zarr.json"} <= kinds  # fmt: skip
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask_027)}, modes
    dirs = [a for a in artifacts if a.is_dir()]
    dirs += [p for a in dirs for p in a.rglob("*") if p.is_dir()]
    dir_modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in dirs}
    assert set(dir_modes.values()) == {oct(0o777 & ~umask_027)}, dir_modes
