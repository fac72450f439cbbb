"""Batched linear probes: planted directions, against scikit-learn, the split, early stopping,
refusals, save/load, and streaming from an activation store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechflow.artifacts import DamagedArtifactError
from mechflow.probes.config import ProbeConfig
from mechflow.probes.io import load_probes, save_probes
from mechflow.probes.linear import predict, predict_logits, predict_proba
from mechflow.probes.model import BatchedProbes
from mechflow.probes.sources import ArraySource, StoreSource
from mechflow.probes.split import split_by_group
from mechflow.probes.synthetic import planted_probe_data
from mechflow.probes.train import train_probes

NOISE = 0.1
# small data converges in fewer, smaller steps than the defaults' 20k-row sweeps
FAST = {"batch_size": 256, "lr": 1e-2}
STORE_HOOKS = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def planted(**kwargs):
    args = {
        "n_rows": 10_000, "d_model": 8, "n_targets": 4, "n_classes": 3, "label_noise": NOISE,
        "rows_per_group": 20, "class_offset": 1.0, "seed": 0,
    } | kwargs  # fmt: skip
    return planted_probe_data(**args)


def train(data, **cfg):
    config = ProbeConfig(n_classes=data.directions.shape[-1], **(FAST | cfg))
    return train_probes(data.acts, data.labels, config, groups=data.groups, progress=False)


def accuracy(result, hook: int) -> np.ndarray:
    table = result.table
    return table[table["hook"] == f"hook_{hook}"]["validation_accuracy"].to_numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# --- what probes find -----------------------------------------------------------------------
def test_planted_signal_hooks_reach_the_noise_ceiling_and_noise_hooks_the_baseline():
    # hook 2 is a signal hook 20x larger, hook 3 a noise hook 20x smaller: standardisation
    data = planted(signal=[1.0, 0.0, 1.0, 0.0], scales=[1.0, 1.0, 20.0, 0.05])
    result = train(data)
    table = result.table
    baseline = table["baseline_accuracy"].to_numpy()[:4]
    assert baseline.min() > 0.45  # class offsets: the majority is well above chance
    for hook in (0, 2):
        # multinomial MLE under symmetric label noise sits a few points below 1 - noise
        # (scikit-learn's does too): argmax-of-linear classes are not softmax-shaped
        acc = accuracy(result, hook)
        assert np.all(acc > 1 - NOISE - 0.05) and np.all(acc < 1 - NOISE + 0.02), acc
    for hook in (1, 3):
        np.testing.assert_allclose(accuracy(result, hook), baseline, atol=0.02)
    assert set(table.columns) >= {"train_accuracy", "best_validation_loss", "epochs", "n_train"}
    assert (table["n_train"] + table["n_validation"] == 10_000).all()
    val = result.validation
    preds = predict(result.probes, data.acts).numpy()  # hook row target
    np.testing.assert_allclose(
        (preds[:, val] == data.labels[val]).mean(1).ravel(),
        table["validation_accuracy"].to_numpy(),
        atol=1e-6,
    )


def test_binary_probe_weights_align_with_the_planted_direction():
    data = planted(
        n_classes=2, n_targets=3, signal=[1.0, 0.6, 0.0], scales=[3.0, 0.2, 1.0], class_offset=0.0
    )
    result = train(data)
    w, _ = result.probes.raw_weights()  # directions in the hooks' own coordinates
    w = w.numpy()
    learned, planted_dir = w[..., 1] - w[..., 0], data.directions[..., 1] - data.directions[..., 0]
    assert np.all(cosine(learned[:2], planted_dir[:2]) > 0.9), cosine(learned[:2], planted_dir[:2])
    acc = accuracy(result, 0)
    assert np.all(np.abs(acc - (1 - NOISE)) < 0.025), acc  # binary: the MLE direction is right
    assert np.all(accuracy(result, 1) < acc)  # a weaker signal reads worse


def test_matches_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    data = planted(n_rows=4000, d_model=12, n_targets=3, signal=[1.0, 0.6], class_offset=0.5)
    result = train(data)
    val, fit = result.validation, ~result.validation
    ours = predict(result.probes, data.acts).numpy()
    ours_acc, sk_acc, agree = [], [], []
    for h in range(2):
        for t in range(3):
            model = LogisticRegression().fit(data.acts[h][fit], data.labels[fit, t])  # lbfgs, C=1
            pred = model.predict(data.acts[h][val])
            sk_acc.append((pred == data.labels[val, t]).mean())
            ours_acc.append((ours[h, val, t] == data.labels[val, t]).mean())
            agree.append((pred == ours[h, val, t]).mean())
    assert abs(np.mean(ours_acc) - np.mean(sk_acc)) < 0.01, (ours_acc, sk_acc)
    assert np.mean(agree) >= 0.95 and min(agree) > 0.9, agree


def test_batched_probes_train_as_they_would_alone():
    """Each probe's loss is its own mean and Adam is per parameter: a sweep of every hook and
    target gives each probe the weights it gets when trained alone on the same batches."""
    data = planted(n_rows=3000, signal=[1.0, 0.5, 0.0])
    config = ProbeConfig(n_classes=3, **FAST)
    full = train_probes(data.acts, data.labels, config, groups=data.groups, progress=False)
    alone = train_probes(
        data.acts[1:2], data.labels[:, 2:3], config, groups=data.groups, progress=False
    )
    torch.testing.assert_close(
        alone.probes.weight[0, 0], full.probes.weight[1, 2], atol=1e-5, rtol=1e-4
    )
    row = full.table.iloc[1 * 4 + 2]
    assert alone.table["epochs"][0] == row["epochs"]
    assert alone.table["best_epoch"][0] == row["best_epoch"]


# --- the split, ignored labels, early stopping ----------------------------------------------
def test_split_keeps_groups_whole_and_is_seeded():
    groups = np.repeat(np.arange(50), 7)[np.random.default_rng(0).permutation(350)]
    val = split_by_group(groups, 0.2, seed=3)
    assert not set(groups[val]) & set(groups[~val])  # no game on both sides
    assert len(set(groups[val])) == 10
    np.testing.assert_array_equal(val, split_by_group(groups, 0.2, seed=3))
    assert not np.array_equal(val, split_by_group(groups, 0.2, seed=4))
    order = np.argsort(groups, kind="stable")  # rows reordered: the same groups held out
    np.testing.assert_array_equal(split_by_group(groups[order], 0.2, seed=3), val[order])
    with pytest.raises(ValueError, match="at least 2 distinct groups"):
        split_by_group(np.zeros(10), 0.2, seed=0)

    data = planted(n_rows=600, signal=[1.0])
    result = train(data, max_epochs=2)
    assert not set(data.groups[result.validation]) & set(data.groups[~result.validation])


def test_ignored_labels_are_masked_out():
    data = planted(n_rows=4000, signal=[1.0])
    labels = data.labels.copy()
    finished = np.arange(4000) % 20 >= 15  # the last moves of every game have no label
    labels[finished, 0] = -1
    labels[:, 3] = -1  # a target with no label at all
    config = ProbeConfig(n_classes=3, **FAST)
    result = train_probes(data.acts, labels, config, groups=data.groups, progress=False)
    table = result.table
    assert table["n_train"][0] + table["n_validation"][0] == 3000
    assert table["n_train"][1] + table["n_validation"][1] == 4000
    assert table["validation_accuracy"][0] > 1 - NOISE - 0.05
    assert np.isnan(table["validation_accuracy"][3]) and table["n_train"][3] == 0
    assert torch.all(result.probes.weight[0, 3] == 0)  # no label, no gradient
    with pytest.raises(ValueError, match="labels: 7 .* neither a class"):
        bad = labels.copy()
        bad[5, 1] = 7
        train_probes(data.acts, bad, config, groups=data.groups, progress=False)


def test_early_stopping_keeps_each_probes_best_epoch():
    # few rows and many features: the signal hook's probes improve for ~10 epochs, then
    # overfit; the noise hook's overfit at once
    data = planted(n_rows=400, d_model=48, signal=[0.8, 0.0], rows_per_group=10)
    result = train(data, lr=3e-3, batch_size=32, patience=3, tolerance=0.0, max_epochs=40)
    table, history = result.table, result.history
    final = history[history["epoch"] == history["epoch"].max()]
    for i, row in table.iterrows():
        mine = history[(history["hook"] == row["hook"]) & (history["target"] == row["target"])]
        trained = mine[mine["training"]]
        assert trained["epoch"].max() == row["epochs"]
        assert row["best_epoch"] == trained["epoch"].iloc[trained["validation_loss"].argmin()]
        assert row["best_validation_loss"] == pytest.approx(trained["validation_loss"].min())
        assert row["epochs"] == row["best_epoch"] + 3 < 40  # stopped by patience
        # training went on past the best epoch (the other probes): the last weights are worse
        assert final["validation_loss"].iloc[i] > row["best_validation_loss"]
        if row["hook"] == "hook_0":
            assert row["best_epoch"] >= 5
        else:
            assert row["best_epoch"] <= 1
    # the kept weights are the best epoch's: their validation loss is the recorded one
    val = result.validation
    proba = predict_proba(result.probes, data.acts).numpy()[:, val]  # hook row target class
    labels = data.labels[val]
    picked = np.take_along_axis(proba, labels[None, :, :, None], axis=3)[..., 0]
    np.testing.assert_allclose(
        -np.log(picked).mean(1).ravel(), table["best_validation_loss"], rtol=1e-4
    )


# --- refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"n_classes": 1}, "n_classes"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"lr": 0}, "lr"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"patience": 0}, "patience"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"ignore_index": 1}, "ignore_index"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_refuses_bad_values_naming_them(change, key):
    with pytest.raises(ValueError, match=f"probes.{key}"):
        ProbeConfig(**({"n_classes": 3} | change))


def test_config_round_trip_and_unknown_keys():
    cfg = ProbeConfig(n_classes=4, lr=0.1, seed=3)
    assert ProbeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key.*'epochs'"):
        ProbeConfig.from_dict({"n_classes": 3, "epochs": 3})


def test_bad_inputs_are_refused_naming_the_argument():
    data = planted(n_rows=200, signal=[1.0, 0.0])
    cfg = ProbeConfig(n_classes=3)
    kw = {"groups": data.groups, "progress": False}
    with pytest.raises(ValueError, match="labels have 199 rows but acts have 200"):
        train_probes(data.acts, data.labels[:199], cfg, **kw)
    with pytest.raises(ValueError, match="groups: expected one id per row of acts \\(200\\)"):
        train_probes(data.acts, data.labels, cfg, groups=data.groups[:10], progress=False)
    with pytest.raises(ValueError, match="acts: expected \\(hooks, rows, d_model\\)"):
        train_probes(data.acts[0], data.labels, cfg, **kw)
    with pytest.raises(TypeError, match="labels: expected integer"):
        train_probes(data.acts, data.labels.astype(float), cfg, **kw)
    with pytest.raises(ValueError, match="labels: expected \\(rows, targets\\)"):
        train_probes(data.acts, data.labels[:, 0], cfg, **kw)
    with pytest.raises(ValueError, match="hook_names: expected 2"):
        train_probes(data.acts, data.labels, cfg, hook_names=["a"], **kw)
    with pytest.raises(ValueError, match="target_names: expected 4"):
        train_probes(data.acts, data.labels, cfg, target_names=["a", "b"], **kw)
    with pytest.raises(ValueError, match="class_names: expected 3"):
        train_probes(data.acts, data.labels, cfg, class_names=["a", "a", "b"], **kw)
    broken = data.acts.copy()
    broken[1, 3, 2] = np.nan
    with pytest.raises(ValueError, match="acts: hook\\(s\\) \\['hook_1'\\] hold non-finite"):
        train_probes(broken, data.labels, cfg, **kw)
    probes = train(data, max_epochs=1).probes
    with pytest.raises(ValueError, match="acts: 1 hooks, the probes have 2"):
        predict(probes, data.acts[:1])


# --- save / load ----------------------------------------------------------------------------
def test_save_load_round_trip_and_refusals(tmp_path):
    data = planted(n_rows=1000, signal=[1.0, 0.5], scales=[4.0, 1.0])
    names = {"target_names": ["a1", "b2", "c3", "d4"], "class_names": ["empty", "mine", "theirs"]}
    config = ProbeConfig(n_classes=3, max_epochs=3)
    probes = train_probes(
        data.acts, data.labels, config, groups=data.groups, hook_names=["h0", "h1"],
        progress=False, **names,
    ).probes  # fmt: skip
    out = save_probes(probes, tmp_path / "probes", provenance={"labels": "boards"})
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["hook_names"] == ["h0", "h1"] and cfg["class_names"] == names["class_names"]
    assert cfg["shapes"]["weight"] == [2, 4, 8, 3] and cfg["d_model"] == 8
    assert cfg["config"] == config.to_dict() and cfg["provenance"] == {"labels": "boards"}
    loaded = load_probes(out)
    assert loaded.target_names == probes.target_names and loaded.config == config
    torch.testing.assert_close(predict_logits(loaded, data.acts), predict_logits(probes, data.acts))
    assert torch.equal(predict(loaded, data.acts), predict(probes, data.acts))

    other = save_probes(
        train(planted(n_rows=1000, signal=[1.0, 0.0]), max_epochs=1).probes, tmp_path / "other"
    )
    (out / "probes.safetensors").write_bytes((other / "probes.safetensors").read_bytes())
    with pytest.raises(DamagedArtifactError, match="probes.safetensors"):
        load_probes(out)
    (other / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 8}))
    with pytest.raises(ValueError, match="other/cfg.json: format None"):
        load_probes(other)
    with pytest.raises(FileNotFoundError, match="not a probes directory"):
        load_probes(tmp_path / "missing")


# --- streaming from an activation store -----------------------------------------------------
@pytest.fixture
def store(tiny_model, tmp_path):
    from mechflow.data.induction import repeated_random
    from mechflow.store import open_store, write_activation_store

    tokens = repeated_random(n_sequences=60, half_len=8, d_vocab=20, seed=1)  # 60 seq x 17 pos
    prov = {"model": "tiny", "model_hash": "m0", "dataset_sha256": "d0", "seed": 0}
    out = write_activation_store(
        tiny_model, tokens, tmp_path / "s.zarr", STORE_HOOKS, batch_size=10, chunk_size=5,
        dtype="float32", provenance=prov, progress=False,
    )  # fmt: skip
    return open_store(out)


def store_labels(store, n_targets: int = 3, n_classes: int = 3) -> np.ndarray:
    """Argmax of planted linear functions of the last residual stream, 10% flipped."""
    rng = np.random.default_rng(0)
    resid = store.numpy("blocks.1.hook_resid_post").reshape(-1, 16)
    resid = (resid - resid.mean(0)) / resid.std(0)
    labels = (
        (resid @ rng.standard_normal((16, n_targets * n_classes)))
        .reshape(-1, n_targets, n_classes)
        .argmax(-1)
    )
    flip = rng.random(labels.shape) < NOISE
    return np.where(flip, (labels + 1) % n_classes, labels)


def in_memory(store) -> np.ndarray:
    return np.stack([store.numpy(h).reshape(-1, 16) for h in STORE_HOOKS])  # hook row d_model


def test_store_streaming_equals_the_in_memory_path(store):
    source = StoreSource(store, STORE_HOOKS)
    assert source.n_rows == 1020 and len(source.chunks()) == 12  # 5 sequences per chunk
    labels, config = store_labels(store), ProbeConfig(n_classes=3, **FAST)
    streamed = train_probes(source, labels, config, progress=False)
    memory = train_probes(
        in_memory(store), labels, config, groups=np.repeat(np.arange(60), 17),
        hook_names=STORE_HOOKS, progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(streamed.validation, memory.validation)  # one group per seq
    torch.testing.assert_close(streamed.probes.weight, memory.probes.weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(streamed.probes.mean, memory.probes.mean)
    assert streamed.table.drop(columns="best_validation_loss").equals(
        memory.table.drop(columns="best_validation_loss")
    )
    assert streamed.probes.source["model_hash"] == "m0"
    last = streamed.table[streamed.table["hook"] == STORE_HOOKS[-1]]
    assert (last["validation_accuracy"] > last["baseline_accuracy"] + 0.2).all()
    assert torch.equal(predict(streamed.probes, source), predict(memory.probes, in_memory(store)))


def test_store_streaming_in_bounded_memory(store, monkeypatch):
    labels = store_labels(store)
    config = ProbeConfig(n_classes=3, shuffle_buffer_rows=200, **FAST)  # 3 chunks of 85 rows
    seen: list[np.ndarray] = []
    step = BatchedProbes.step

    def recording(self, x, y):
        seen.append(y.numpy().copy())
        step(self, x, y)

    monkeypatch.setattr(BatchedProbes, "step", recording)
    streamed = train_probes(StoreSource(store, STORE_HOOKS), labels, config, progress=False)
    assert streamed.max_buffer_rows == 255 < 1020  # never every row at once

    # every training row once per epoch: one epoch's batches hold the training split's labels
    def codes(rows: np.ndarray) -> np.ndarray:
        return np.sort(rows.astype(np.int64) @ np.array([9, 3, 1]))

    train_rows = labels[~streamed.validation]
    first_epoch = np.concatenate(seen)[: len(train_rows)]
    np.testing.assert_array_equal(codes(first_epoch), codes(train_rows))
    monkeypatch.undo()
    memory = train_probes(
        in_memory(store), labels, ProbeConfig(n_classes=3, **FAST),
        groups=np.repeat(np.arange(60), 17), progress=False,
    )  # fmt: skip
    # another data order, the same optimum: accuracies and predictions agree closely
    np.testing.assert_allclose(
        streamed.table["validation_accuracy"], memory.table["validation_accuracy"], atol=0.04
    )
    agree = predict(streamed.probes, in_memory(store)) == predict(memory.probes, in_memory(store))
    assert agree[-1].float().mean() > 0.9


def test_array_source_chunking_does_not_change_the_probes():
    data = planted(n_rows=1000, signal=[1.0, 0.3])
    config = ProbeConfig(n_classes=3, max_epochs=5, **FAST)
    whole = train_probes(data.acts, data.labels, config, groups=data.groups, progress=False)
    chunked = train_probes(
        ArraySource(data.acts, chunk_rows=70), data.labels, config, groups=data.groups,
        progress=False,
    )  # fmt: skip
    torch.testing.assert_close(whole.probes.weight, chunked.probes.weight)


def test_trains_on_the_tensors_device_and_agrees_with_cpu():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    data = planted(n_rows=2000, signal=[1.0, 0.0])
    config = ProbeConfig(n_classes=3, max_epochs=5, **FAST)
    results = {}
    for device in devices:
        acts = torch.from_numpy(data.acts).to(device)
        labels = torch.from_numpy(data.labels).to(device)
        results[device] = train_probes(acts, labels, config, groups=data.groups, progress=False)
        assert results[device].probes.device.type == device
        assert predict(results[device].probes, acts).device.type == device
    if "cuda" in results:
        np.testing.assert_allclose(
            results["cuda"].table["validation_accuracy"],
            results["cpu"].table["validation_accuracy"],
            atol=0.01,
        )
