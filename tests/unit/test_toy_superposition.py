"""The toy model of superposition: config validation, the model, batches, loss, training, I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechflow.experiments.superposition.analysis import feature_norms, gram, superposition
from mechflow.experiments.superposition.toy_model import (
    LOG_COLUMNS,
    ToyModel,
    ToyModelConfig,
    generate_batch,
    importance_weighted_mse,
    load_toy_model,
    read_toy_config,
    save_toy_model,
    train_instances,
    train_toy_model,
)


def config(**overrides) -> ToyModelConfig:
    fields = {
        "n_features": 5,
        "d_hidden": 2,
        "n_instances": 2,
        "feature_probability": [1.0, 0.1],
        "steps": 20,
        "batch_size": 16,
        "log_every": 5,
    }
    return ToyModelConfig(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"d_hidden": 5}, "d_hidden"),
        ({"d_hidden": 0}, "d_hidden"),
        ({"n_features": 2.5}, "n_features"),
        ({"feature_probability": [1.0, 0.0]}, "feature_probability"),
        ({"feature_probability": [1.5, 0.5]}, "feature_probability"),
        ({"feature_probability": [1.0]}, "feature_probability"),
        ({"feature_probability": "0.5"}, "feature_probability"),
        ({"feature_probability": None}, "feature_probability"),
        ({"feature_probability_range": [0.1, 1.0]}, "feature_probability_range"),
        (
            {"feature_probability": None, "feature_probability_range": [0.5, 0.1]},
            "feature_probability_range",
        ),
        (
            {"feature_probability": None, "feature_probability_range": [0.0, 1.0]},
            "feature_probability_range",
        ),
        ({"importance_decay": 0.0}, "importance_decay"),
        ({"importance_min": 2.0}, "importance_min"),
        ({"importance_min": 0.01, "importance_decay": 0.9}, "importance_min"),
        ({"lr": -1.0}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"steps": 0}, "steps"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=rf"toy_model\.{key}"):
        config(**overrides)


def test_from_dict_rejects_unknown_keys_and_round_trips():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_hiden'\]"):
        ToyModelConfig.from_dict({"n_features": 5, "n_hiden": 2})
    cfg = config()
    assert ToyModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.feature_probability == (1.0, 0.1)  # lists from JSON become tuples (hashable)


def test_probability_range_is_log_spaced_from_dense_to_sparse():
    cfg = config(n_instances=3, feature_probability=None, feature_probability_range=[0.01, 1])
    np.testing.assert_allclose(cfg.probabilities(), [1.0, 0.1, 0.01])
    assert config().probabilities().tolist() == [1.0, 0.1]


def test_importance_forms():
    np.testing.assert_allclose(config(importance_decay=0.9).importance(), 0.9 ** np.arange(5))
    np.testing.assert_allclose(
        config(importance_min=0.01).importance(), 100.0 ** -np.linspace(0, 1, 5)
    )
    np.testing.assert_allclose(config().importance(), np.ones(5))


def test_forward_is_relu_of_wtw_x_plus_b():
    model = ToyModel(3, 4, 2)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.b_final.normal_()
    x = torch.rand(3, 7, 4)  # instances batch features
    expected = torch.stack(
        [
            torch.relu(x[i] @ (model.W[i].T @ model.W[i]).T + model.b_final[i])
            for i in range(3)  # WᵀW is symmetric; transposed for clarity of x @ Mᵀ
        ]
    )
    torch.testing.assert_close(model(x), expected)


def test_generate_batch_sparsity_and_values():
    probability = torch.tensor([[1.0] * 4, [0.3] * 4, [0.05] * 4])
    batch = generate_batch(20000, probability, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 20000, 4)
    assert float(batch.min()) >= 0 and float(batch.max()) <= 1
    active = (batch > 0).float().mean(dim=(1, 2))
    torch.testing.assert_close(active, torch.tensor([1.0, 0.3, 0.05]), atol=0.01, rtol=0)
    for i in range(3):
        values = batch[i][batch[i] > 0]
        assert abs(float(values.mean()) - 0.5) < 0.02  # uniform on [0, 1] when active
        assert abs(float(values.var()) - 1 / 12) < 0.01
    again = generate_batch(20000, probability, torch.Generator().manual_seed(0))
    assert torch.equal(batch, again)


def test_importance_weighted_mse_per_instance():
    out, target = torch.rand(2, 8, 3), torch.rand(2, 8, 3)
    importance = torch.tensor([[1.0, 0.5, 0.25], [1.0, 1.0, 1.0]])
    expected = torch.stack([(importance[i] * (target[i] - out[i]) ** 2).mean() for i in range(2)])
    torch.testing.assert_close(importance_weighted_mse(out, target, importance), expected)


def test_training_is_seeded_and_logs_every_instance():
    model_a, log_a = train_toy_model(config(), progress=False)
    model_b, log_b = train_toy_model(config(), progress=False)
    model_c, _ = train_toy_model(config(seed=1), progress=False)
    assert torch.equal(model_a.W, model_b.W) and log_a.equals(log_b)
    assert not torch.equal(model_a.W, model_c.W)
    assert list(log_a.columns) == LOG_COLUMNS
    assert log_a["step"].unique().tolist() == [5, 10, 15, 20]
    assert log_a.groupby("instance")["feature_probability"].first().tolist() == [1.0, 0.1]
    assert np.isfinite(log_a["loss"]).all()


def test_lr_schedules():
    _, constant = train_toy_model(config(lr_schedule="constant", lr=0.01), progress=False)
    _, cosine = train_toy_model(config(lr_schedule="cosine", lr=0.01), progress=False)
    assert (constant["lr"] == 0.01).all()
    lrs = cosine.groupby("step")["lr"].first()
    assert lrs.is_monotonic_decreasing and lrs.iloc[-1] < 0.001


def test_non_finite_loss_raises():
    model = ToyModel(1, 3, 1)
    with torch.no_grad():
        model.W.fill_(float("nan"))
    ones = torch.ones(1, 3)
    with pytest.raises(FloatingPointError, match="diverged"):
        train_instances(
            model, ones, ones, steps=3, batch_size=4, lr=0.01, generator=torch.Generator()
        )


def test_save_and_load_round_trip(tmp_path):
    cfg = config()
    model, _ = train_toy_model(cfg, progress=False)
    out = tmp_path / "toy"
    save_toy_model(model, cfg, out, extra={"note": "x"})
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "model.safetensors"]
    loaded, loaded_cfg = load_toy_model(out)
    assert loaded_cfg == cfg == read_toy_config(out)
    torch.testing.assert_close(loaded.W, model.W)
    torch.testing.assert_close(loaded.b_final, model.b_final)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_toy_model(tmp_path)
    (tmp_path / "cfg.json").write_text('{"hooked_transformer_config": {}}')
    with pytest.raises(ValueError, match="not a toy-model directory"):
        load_toy_model(tmp_path)


def test_save_refuses_a_model_that_does_not_match_its_config(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        save_toy_model(ToyModel(3, 5, 2), config(), tmp_path / "toy")


def test_dense_features_get_orthogonal_dimensions_sparse_ones_superpose():
    """Elhage et al. Fig. 2 at n=5, m=2: dense -> the 2 most important features, orthogonal and
    alone; sparse -> more features than dimensions, sharing them."""
    cfg = ToyModelConfig(
        n_features=5,
        d_hidden=2,
        n_instances=2,
        feature_probability=[1.0, 0.03],
        importance_decay=0.7,
        steps=1500,
        batch_size=512,
        seed=0,
    )
    model, log = train_toy_model(cfg, progress=False)
    W = model.W.detach().double().numpy()
    norms, overlap, G = feature_norms(W), superposition(W), gram(W)
    represented = norms > 0.5

    dense = np.flatnonzero(represented[0])
    assert dense.tolist() == [0, 1]  # exactly m features: the most important ones
    np.testing.assert_allclose(norms[0, dense], 1.0, atol=0.05)
    off_diagonal = G[0][np.ix_(dense, dense)] - np.diag(np.diag(G[0][np.ix_(dense, dense)]))
    assert np.abs(off_diagonal).max() < 0.05  # orthogonal
    assert overlap[0, dense].max() < 0.05  # no superposition
    assert m_over_frobenius(W[0]) == pytest.approx(1.0, abs=0.05)

    assert represented[1].sum() >= 4  # more features than the 2 dimensions
    assert overlap[1, represented[1]].mean() > 0.3
    assert m_over_frobenius(W[1]) < 0.6
    final = log[log["step"] == cfg.steps]["loss"].to_numpy()
    assert final[1] < final[0]  # sparse data is easier to reconstruct


def m_over_frobenius(W: np.ndarray) -> float:
    return W.shape[0] / float((W**2).sum())
