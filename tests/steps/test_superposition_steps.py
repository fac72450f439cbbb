"""The superposition steps through their main([...]): train -> analyze -> plot, and the phase map."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mechflow.artifacts import read_json, write_table
from mechflow.experiments.superposition.analysis import (
    FEATURE_COLUMNS,
    INSTANCE_COLUMNS,
    PHASE_COLUMNS,
    PHASES,
    WTW_COLUMNS,
)
from mechflow.experiments.superposition.toy_model import LOG_COLUMNS, load_toy_model
from mechflow.steps import (
    analyze_superposition,
    map_superposition_phases,
    plot_figure,
    train_toy_model,
)

TOY = {
    "n_features": 5,
    "d_hidden": 2,
    "n_instances": 3,
    "feature_probability_range": [0.05, 1.0],
    "importance_decay": 0.8,
    "steps": 300,
    "batch_size": 128,
    "log_every": 100,
    "seed": 0,
}
PHASE_MAP = {"n_densities": 2, "n_importances": 2, "restarts": 2, "steps": 100}


def no_temp_files(directory):
    return not [p for p in directory.rglob(".*") if p.is_file()]


def plot(figure, out, **tables):
    """``plot_figure --figure superposition.<figure> --table NAME=PATH ... --out OUT``."""
    argv = ["--figure", f"superposition.{figure}", "--out", str(out)]
    for name, path in tables.items():
        argv += ["--table", f"{name}={path}"]
    plot_figure.main(argv)


def assert_figure_pair(out):
    svg = out.with_suffix(".svg")
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 1000
    assert b"<svg" in svg.read_bytes()[:1000] and svg.stat().st_size > 1000
    assert no_temp_files(out.parent)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """One trained toy model and its tables, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("superposition")
    model_dir = root / "toy_n5"
    train_toy_model.main(["--config", json.dumps(TOY), "--out-dir", str(model_dir)])
    tables = {name: root / "tables" / f"{name}.csv" for name in ("wtw", "features", "instances")}
    analyze_superposition.main(
        ["--model-dir", str(model_dir), "--threshold", "0.5"]
        + [arg for name, path in tables.items() for arg in (f"--{name}", str(path))]
    )
    return model_dir, tables


def test_train_toy_model_writes_model_config_and_log(toy_run):
    model_dir, _ = toy_run
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "cfg.json",
        "model.safetensors",
        "train_log.csv",
    ]
    meta = read_json(model_dir / "cfg.json")
    assert meta["toy_model_config"]["feature_probability_range"] == [0.05, 1.0]
    assert set(meta["final_loss"]) == {"0", "1", "2"} and meta["git_revision"]
    model, cfg = load_toy_model(model_dir)
    assert model.shape == (3, 2, 5) and cfg.steps == 300
    log = pd.read_csv(model_dir / "train_log.csv")
    assert list(log.columns) == LOG_COLUMNS and len(log) == 3 * 3


def test_train_toy_model_refuses_a_bad_config(tmp_path):
    out = tmp_path / "toy"
    with pytest.raises(ValueError, match="d_hidden"):
        train_toy_model.main(
            ["--config", json.dumps({**TOY, "d_hidden": 5}), "--out-dir", str(out)]
        )
    assert not out.exists()


def test_analyze_superposition_tables(toy_run):
    _, tables = toy_run
    wtw = pd.read_csv(tables["wtw"])
    features = pd.read_csv(tables["features"])
    instances = pd.read_csv(tables["instances"])
    assert list(wtw.columns) == WTW_COLUMNS and len(wtw) == 3 * 5 * 5
    assert list(features.columns) == FEATURE_COLUMNS and len(features) == 3 * 5
    assert list(instances.columns) == INSTANCE_COLUMNS and len(instances) == 3
    assert set(wtw["model"]) == set(features["model"]) == {"toy_n5"}
    assert instances["feature_probability"].iloc[0] == pytest.approx(1.0)
    assert instances["feature_probability"].iloc[-1] == pytest.approx(0.05)
    diag = wtw[wtw.i == wtw.j].set_index(["instance", "i"])["value"]
    norms = features.set_index(["instance", "feature"])["norm"]
    pd.testing.assert_series_equal(
        diag.rename_axis(["instance", "feature"]), norms**2, check_names=False
    )
    assert no_temp_files(tables["wtw"].parent)


def test_analyze_superposition_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        analyze_superposition.run(
            tmp_path, tmp_path / "a", tmp_path / "b", tmp_path / "c", threshold=0.5
        )
    assert not (tmp_path / "a").exists()


def test_plot_superposition_and_dimensionality(toy_run, tmp_path):
    _, tables = toy_run
    out = tmp_path / "figures" / "superposition.png"
    args = {"wtw": tables["wtw"], "features": tables["features"]}
    plot("superposition", out, **args)
    assert_figure_pair(out)
    first = out.read_bytes()
    plot("superposition", out, **args)
    assert out.read_bytes() == first  # reruns are byte-identical
    plot_figure.main(
        ["--figure", "superposition.superposition", "--table", f"wtw={tables['wtw']}",
         "--table", f"features={tables['features']}", "--out", str(out), "--title", "custom"]
    )  # fmt: skip
    assert out.read_bytes() != first

    out = tmp_path / "figures" / "dimensionality.png"
    plot("dimensionality", out, features=tables["features"], instances=tables["instances"])
    assert_figure_pair(out)


@pytest.mark.parametrize("table", ["wtw", "features"])
def test_plot_superposition_missing_column_names_file_and_column(toy_run, tmp_path, table):
    _, tables = toy_run
    broken = tmp_path / "broken.csv"
    column = "value" if table == "wtw" else "norm"
    write_table(pd.read_csv(tables[table]).drop(columns=[column]), broken)
    paths = {**tables, table: broken}
    out = tmp_path / "fig.png"
    with pytest.raises(ValueError, match=rf"broken\.csv.*'{column}'"):
        plot("superposition", out, wtw=paths["wtw"], features=paths["features"])
    assert not out.exists() and not out.with_suffix(".svg").exists()


def test_plot_dimensionality_refuses_tables_of_two_models(toy_run, tmp_path):
    _, tables = toy_run
    other = tmp_path / "instances.csv"
    write_table(pd.read_csv(tables["instances"]).assign(model="other"), other)
    with pytest.raises(ValueError, match="other"):
        plot("dimensionality", tmp_path / "fig.png", features=tables["features"], instances=other)


def test_plot_out_must_be_png(toy_run, tmp_path):
    _, tables = toy_run
    with pytest.raises(ValueError, match=r"\.png"):
        plot(
            "dimensionality",
            tmp_path / "f.svg",
            features=tables["features"],
            instances=tables["instances"],
        )


def test_map_and_plot_phases(tmp_path):
    table = tmp_path / "phases.csv"
    map_superposition_phases.main(["--config", json.dumps(PHASE_MAP), "--out", str(table)])
    df = pd.read_csv(table)
    assert list(df.columns) == PHASE_COLUMNS and len(df) == 4
    assert set(df["phase"]) <= {*PHASES, "unclassified"}
    out = tmp_path / "phases.png"
    plot("superposition_phases", out, table=table)
    assert_figure_pair(out)

    write_table(df.assign(phase="melted"), table)
    with pytest.raises(ValueError, match=r"phases\.csv.*melted"):
        plot("superposition_phases", out, table=table)


def test_map_phases_refuses_unknown_keys(tmp_path):
    out = tmp_path / "phases.csv"
    with pytest.raises(ValueError, match="unknown key"):
        map_superposition_phases.main(["--config", '{"d_hidden": 2}', "--out", str(out)])
    assert not out.exists()
