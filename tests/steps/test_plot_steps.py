"""Figure steps: table in, PNG + SVG out (same stem), bad tables refused with the file named."""

from __future__ import annotations

import importlib
import itertools

import pandas as pd
import pytest

from mechflow.artifacts import write_table

MODEL = "toy-2l"
LAYERS, HEADS = range(2), range(4)


def _heads(scores, value=lambda i: 0.1 * (i % 7)):
    rows = itertools.product(scores, LAYERS, HEADS)
    return pd.DataFrame(
        [(MODEL, layer, head, score, value(i)) for i, (score, layer, head) in enumerate(rows)],
        columns=["model", "layer", "head", "score", "value"],
    )


def head_scores():
    return _heads(("previous_token", "duplicate_token", "induction"))


def loss_by_position():
    rows = [
        (MODEL, p, "first" if p <= 8 else "second", 3.0 if p <= 8 else 0.4) for p in range(1, 17)
    ]
    return pd.DataFrame(rows, columns=["model", "pos", "half", "loss"])


def head_ablation():
    rows = [
        (MODEL, layer, head, kind, 2.0 + 0.1 * head, 2.0, 0.1 * head)
        for kind, layer, head in itertools.product(("zero", "mean"), LAYERS, HEADS)
    ]
    return pd.DataFrame(
        rows, columns=["model", "layer", "head", "ablation", "loss", "clean_loss", "delta"]
    )


def phase_change():
    metrics = {
        "induction_score": (0.05, 0.7),
        "previous_token_score": (0.1, 0.5),
        "first_half_loss": (4.0, 4.0),
        "repeated_half_loss": (4.0, 1.0),
        "icl_score": (-0.1, -2.0),
    }
    rows = [
        (MODEL, step, metric, after if step >= 300 else before)
        for step in range(0, 600, 100)
        for metric, (before, after) in metrics.items()
    ]
    return pd.DataFrame(rows, columns=["model", "step", "metric", "value"])


def composition():
    rows = [
        (MODEL, kind, 0, hf, 1, ht, 0.1 + 0.05 * (hf == ht), 0.1)
        for kind, hf, ht in itertools.product("QKV", HEADS, HEADS)
    ]
    columns = ["model", "kind", "layer_from", "head_from", "layer_to", "head_to", "score"]
    return pd.DataFrame(rows, columns=[*columns, "baseline"])


def copying():
    return _heads(("eigen_ratio", "positive_fraction"), value=lambda i: (i % 5) / 4 - 0.5)


STEPS = {
    "plot_head_scores": head_scores,
    "plot_loss_by_position": loss_by_position,
    "plot_head_ablation": head_ablation,
    "plot_phase_change": phase_change,
    "plot_composition": composition,
    "plot_copying": copying,
}
EXTRA_FLAGS = {
    "plot_head_scores": ["--threshold", "0.3"],
    "plot_loss_by_position": ["--d-vocab", "20"],
    "plot_phase_change": ["--threshold", "0.3"],
}


def step_main(name):
    return importlib.import_module(f"mechflow.steps.{name}").main


def assert_figure_pair(out):
    svg = out.with_suffix(".svg")
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 1000
    assert b"<svg" in svg.read_bytes()[:1000] and svg.stat().st_size > 1000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("name", STEPS)
def test_step_writes_png_and_svg(name, tmp_path):
    table = tmp_path / f"{name}.csv"
    write_table(STEPS[name](), table)
    out = tmp_path / "figures" / f"{name}.png"
    step_main(name)(["--table", str(table), "--out", str(out), *EXTRA_FLAGS.get(name, [])])
    assert_figure_pair(out)
    first = out.read_bytes()
    step_main(name)(
        ["--table", str(table), "--out", str(out), "--title", "custom", *EXTRA_FLAGS.get(name, [])]
    )
    assert out.read_bytes() != first  # the title flag reaches the figure


@pytest.mark.parametrize("name", STEPS)
def test_step_missing_column_names_file_and_column(name, tmp_path):
    table = tmp_path / "broken.csv"
    write_table(STEPS[name]().drop(columns=["model"]), table)
    out = tmp_path / "fig.png"
    with pytest.raises(ValueError, match=r"broken\.csv.*'model'"):
        step_main(name)(["--table", str(table), "--out", str(out)])
    assert not out.exists() and not out.with_suffix(".svg").exists()


def test_missing_table_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        step_main("plot_head_scores")(["--table", str(tmp_path / "nope.csv"), "--out", "x.png"])


def test_out_must_be_png(tmp_path):
    table = tmp_path / "t.csv"
    write_table(head_scores(), table)
    with pytest.raises(ValueError, match=r"\.png"):
        step_main("plot_head_scores")(["--table", str(table), "--out", str(tmp_path / "f.svg")])


def test_empty_file_is_a_clear_error(tmp_path):
    table = tmp_path / "empty.csv"
    table.write_text("")
    with pytest.raises(ValueError, match="empty.csv"):
        step_main("plot_copying")(["--table", str(table), "--out", str(tmp_path / "f.png")])


def test_composition_of_a_one_layer_model(tmp_path):
    """A 1-layer model has no head pairs: the table is a header only, the figure says so."""
    table = tmp_path / "composition.csv"
    write_table(composition().iloc[:0], table)
    out = tmp_path / "composition.png"
    step_main("plot_composition")(["--table", str(table), "--out", str(out)])
    assert_figure_pair(out)


def test_threshold_changes_the_phase_change_mark(tmp_path):
    table = tmp_path / "phase.csv"
    write_table(phase_change(), table)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    step_main("plot_phase_change")(["--table", str(table), "--out", str(a)])
    step_main("plot_phase_change")(["--table", str(table), "--out", str(b), "--threshold", "0.9"])
    assert a.read_bytes() != b.read_bytes()
