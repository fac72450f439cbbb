"""Superposition measures on planted geometries with known answers, the tables, and phase maps."""

from __future__ import annotations

import numpy as np
import pytest

from mechflow.experiments.superposition import analysis as sup


def polygon(k: int) -> np.ndarray:
    """k unit vectors evenly spaced on the circle: (1 instance, 2 hidden, k features)."""
    angles = 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(angles), np.sin(angles)])[None]


def tetrahedron() -> np.ndarray:
    v = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) / np.sqrt(3)
    return v.T[None]


PLANTED = {
    # name: (W, expected D_i, expected m/‖W‖_F²)
    "orthogonal": (np.array([[[1.0, 0, 0], [0, 1.0, 0]]]), [1, 1, 0], 1.0),
    "antipodal": (np.array([[[1.0, -1.0]]]), [1 / 2, 1 / 2], 1 / 2),
    "triangle": (polygon(3), [2 / 3] * 3, 2 / 3),
    "tetrahedron": (tetrahedron(), [3 / 4] * 4, 3 / 4),
    "pentagon": (polygon(5), [2 / 5] * 5, 2 / 5),
}


@pytest.mark.parametrize("name", PLANTED)
def test_dimensionality_of_planted_geometries(name):
    W, expected, dpf = PLANTED[name]
    np.testing.assert_allclose(sup.dimensionality(W)[0], expected, atol=1e-12)
    np.testing.assert_allclose(sup.dims_per_feature(W), [dpf], atol=1e-12)


def test_superposition_of_planted_geometries():
    np.testing.assert_allclose(sup.superposition(PLANTED["orthogonal"][0]), [[0, 0, 0]], atol=0)
    np.testing.assert_allclose(sup.superposition(PLANTED["antipodal"][0]), [[1, 1]])
    # triangle: two other unit vectors at 120°, each projecting cos² = 1/4
    np.testing.assert_allclose(sup.superposition(polygon(3)), [[0.5] * 3])


def test_measures_match_their_definitions_on_random_weights():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(3, 4, 7))
    for inst in range(3):
        cols = W[inst].T  # features hidden
        for i in range(7):
            unit = cols[i] / np.linalg.norm(cols[i])
            proj = np.array([(unit @ cols[j]) ** 2 for j in range(7)])
            assert sup.superposition(W)[inst, i] == pytest.approx(proj.sum() - proj[i])
            expected_d = np.linalg.norm(cols[i]) ** 2 / proj.sum()
            assert sup.dimensionality(W)[inst, i] == pytest.approx(expected_d)
    np.testing.assert_allclose(sup.gram(W)[1], W[1].T @ W[1])
    np.testing.assert_allclose(sup.feature_norms(W), np.linalg.norm(W, axis=1))
    np.testing.assert_allclose(sup.dims_per_feature(W), 4 / (W**2).sum(axis=(1, 2)))


def test_dropped_features_are_zero_not_nan():
    W = np.zeros((1, 2, 3))
    W[0, 0, 0] = 1.0
    assert np.isfinite(sup.dimensionality(W)).all() and np.isfinite(sup.superposition(W)).all()
    np.testing.assert_allclose(sup.dimensionality(W), [[1, 0, 0]])
    np.testing.assert_allclose(sup.represented_fraction(W), [1 / 3])
    np.testing.assert_allclose(sup.represented_fraction(W, threshold=1.5), [0.0])


def test_measures_reject_a_matrix():
    with pytest.raises(ValueError, match="instances, d_hidden, n_features"):
        sup.gram(np.ones((2, 3)))


def test_tables():
    W = np.concatenate([np.array([[[1.0, 0, 0], [0, 1.0, 0]]]), polygon(3)])  # 2 instances
    b = np.array([[0.0, 0.0, -0.1], [-0.2, -0.2, -0.2]])
    probs = np.array([1.0, 0.1])
    wtw = sup.wtw_table(W, "toy")
    assert list(wtw.columns) == sup.WTW_COLUMNS and len(wtw) == 2 * 3 * 3
    row = wtw[(wtw.instance == 1) & (wtw.i == 0) & (wtw.j == 1)]
    assert row["value"].item() == pytest.approx(np.cos(2 * np.pi / 3))

    features = sup.feature_table(W, b, probs, 0.9 ** np.arange(3), "toy")
    assert list(features.columns) == sup.FEATURE_COLUMNS and len(features) == 6
    first = features[features.instance == 0].set_index("feature")
    assert first["represented"].tolist() == [True, True, False]
    assert first["bias"].tolist() == [0.0, 0.0, -0.1]
    np.testing.assert_allclose(first["importance"], [1, 0.9, 0.81])
    np.testing.assert_allclose(features["sparsity"], 1 - features["feature_probability"])
    np.testing.assert_allclose(features[features.instance == 1]["dimensionality"], 2 / 3)

    instances = sup.instance_table(W, probs, "toy")
    assert list(instances.columns) == sup.INSTANCE_COLUMNS
    np.testing.assert_allclose(instances["dims_per_feature"], [1.0, 2 / 3])
    np.testing.assert_allclose(instances["features_per_dim"], [1.0, 1.5])
    np.testing.assert_allclose(instances["inverse_density"], [1.0, 10.0])
    assert instances["n_represented"].tolist() == [2, 3]
    np.testing.assert_allclose(instances["fraction_represented"], [2 / 3, 1.0])


def test_tables_check_shapes():
    W = polygon(3)
    with pytest.raises(ValueError, match="one feature probability per instance"):
        sup.instance_table(W, [1.0, 0.5], "toy")
    with pytest.raises(ValueError, match="b must be"):
        sup.feature_table(W, np.zeros((1, 4)), [1.0], np.ones(3), "toy")


@pytest.mark.parametrize(
    ("norms", "cosine", "phase"),
    [
        ((1.0, 0.0), 0.0, "not represented"),
        ((0.0, 1.0), 0.0, "dedicated dimension"),
        ((1.0, 1.0), -1.0, "superposition"),
        ((1.0, 1.0), 1.0, sup.UNCLASSIFIED),
        ((0.1, 0.1), 0.0, sup.UNCLASSIFIED),
    ],
)
def test_classify_phase(norms, cosine, phase):
    assert sup.classify_phase(*norms, cosine) == phase


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"density_range": [0.5, 0.1]}, "density_range"),
        ({"density_range": [0.1, 2.0]}, "density_range"),
        ({"importance_range": [0, 10]}, "importance_range"),
        ({"n_densities": 0}, "n_densities"),
        ({"restarts": 0}, "restarts"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"threshold": 1.0}, "threshold"),
    ],
)
def test_phase_map_config_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=rf"phase_map\.{key}"):
        sup.PhaseMapConfig(**overrides)


def test_phase_map_config_from_dict():
    with pytest.raises(ValueError, match="unknown key"):
        sup.PhaseMapConfig.from_dict({"d_hidden": 2})
    cfg = sup.PhaseMapConfig.from_dict({"density_range": [0.01, 1], "n_densities": 3})
    np.testing.assert_allclose(cfg.densities(), [1.0, 0.1, 0.01])
    assert sup.PhaseMapConfig.from_dict(cfg.to_dict()) == cfg


def test_phase_map_reproduces_the_paper_corners():
    """Dense + unimportant extra feature: dropped; dense + important: it takes the dimension;
    sparse + equally important: both share the dimension antipodally (Elhage et al. Fig. 9)."""
    cfg = sup.PhaseMapConfig(
        density_range=(0.03, 1.0),
        n_densities=3,
        importance_range=(0.1, 10.0),
        n_importances=3,
        steps=800,
    )
    df = sup.map_phases(cfg, progress=False)
    assert list(df.columns) == sup.PHASE_COLUMNS and len(df) == 9
    cell = df.set_index([df["relative_importance"].round(3), df["feature_probability"].round(3)])
    assert cell.loc[(0.1, 1.0), "phase"] == "not represented"
    assert cell.loc[(10.0, 1.0), "phase"] == "dedicated dimension"
    sparse_equal = cell.loc[(1.0, 0.03)]
    assert sparse_equal["phase"] == "superposition"
    assert sparse_equal["cosine"] < -0.95
    assert min(sparse_equal["norm_1"], sparse_equal["norm_2"]) > 0.8
    assert (df["phase"] != sup.UNCLASSIFIED).all()
    assert df.equals(sup.map_phases(cfg, progress=False))  # seeded
