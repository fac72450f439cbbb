"""The generic figure step (``mechflow.steps.plot_figure``): tables in, PNG + SVG out (same stem),
byte-identical on rerun, bad tables and flags refused with the file or flag named."""

from __future__ import annotations

import html
import importlib
import inspect
import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle

from mechflow.artifacts import write_table
from mechflow.experiments import EXPERIMENTS
from mechflow.experiments.induction.figures import (
    FIGURES,
    composition_figure,
    head_scores_figure,
    loss_by_position_figure,
    phase_change_figure,
)
from mechflow.plots.style import read_figure_table, save_figure
from mechflow.steps import plot_figure

MODEL = "toy-2l"
LAYERS, HEADS = range(2), range(4)
TAB_RED = "#d62728"  # the box around a head above the threshold


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


STEPS = {  # induction figure -> its test table
    "head_scores": head_scores,
    "loss_by_position": loss_by_position,
    "head_ablation": head_ablation,
    "phase_change": phase_change,
    "composition": composition,
    "copying": copying,
}
OPTIONS = {  # --option flags, and the keywords they must reach the figure function as
    "head_scores": {"threshold": 0.3},
    "loss_by_position": {"d_vocab": 20},
    "phase_change": {"threshold": 0.3},
}


def plot(figure, tables, out, *extra):
    """Run the step; ``tables`` maps a table name to one path or a list of paths."""
    argv = ["--figure", figure, "--out", str(out), *extra]
    for name, paths in tables.items():
        for path in paths if isinstance(paths, list) else [paths]:
            argv += ["--table", f"{name}={path}"]
    plot_figure.main(argv)


def plot_induction(name, table, out, *extra, **options):
    flags = [arg for key, value in options.items() for arg in ("--option", f"{key}={value}")]
    plot(f"induction.{name}", {"table": table}, out, *flags, *extra)


def assert_figure_pair(out):
    svg = out.with_suffix(".svg")
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 1000
    assert b"<svg" in svg.read_bytes()[:1000] and svg.stat().st_size > 1000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def figure_bytes(out):
    return out.read_bytes(), out.with_suffix(".svg").read_bytes()


def svg_texts(out):
    """The text lines of a figure: with svg.fonttype 'path' matplotlib draws text as outlines and
    writes each line as a comment just before them."""
    svg = out.with_suffix(".svg").read_text(encoding="utf-8")
    return [html.unescape(text) for text in re.findall(r"<!-- (.*?) -->", svg)]


def assert_nothing_written(directory):
    assert not [p for p in directory.rglob("*") if p.suffix in {".png", ".svg"}]
    assert not [p for p in directory.rglob(".*") if p.is_file()]


@pytest.mark.parametrize("name", STEPS)
def test_step_writes_png_and_svg(name, tmp_path):
    table = tmp_path / f"{name}.csv"
    write_table(STEPS[name](), table)
    out = tmp_path / "figures" / f"{name}.png"
    options = OPTIONS.get(name, {})
    plot_induction(name, table, out, **options)
    assert_figure_pair(out)
    first = figure_bytes(out)
    # exactly the figure function's figure, the options converted to their types on the way
    expected = tmp_path / "expected" / "figure.png"
    expected.parent.mkdir()
    save_figure(FIGURES[name].draw(read_figure_table(table), **options), expected)
    assert figure_bytes(expected) == first
    plot_induction(name, table, out, **options)
    assert figure_bytes(out) == first  # reruns are byte-identical, PNG and SVG
    plot_induction(name, table, out, "--title", "custom", **options)
    assert out.read_bytes() != first[0]  # the title flag reaches the figure
    assert "custom" in svg_texts(out)


@pytest.mark.parametrize("name", STEPS)
def test_step_missing_column_names_file_and_column(name, tmp_path):
    table = tmp_path / "broken.csv"
    write_table(STEPS[name]().drop(columns=["model"]), table)
    out = tmp_path / "fig.png"
    with pytest.raises(ValueError, match=r"broken\.csv.*'model'"):
        plot_induction(name, table, out)
    assert not out.exists() and not out.with_suffix(".svg").exists()


def test_missing_table_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        plot_induction("head_scores", tmp_path / "nope.csv", tmp_path / "x.png")


def test_out_must_be_png(tmp_path):
    table = tmp_path / "t.csv"
    write_table(head_scores(), table)
    with pytest.raises(ValueError, match=r"\.png"):
        plot_induction("head_scores", table, tmp_path / "f.svg")
    assert_nothing_written(tmp_path)


def test_empty_file_is_a_clear_error(tmp_path):
    table = tmp_path / "empty.csv"
    table.write_text("")
    with pytest.raises(ValueError, match="empty.csv"):
        plot_induction("copying", table, tmp_path / "f.png")


def test_composition_of_a_one_layer_model(tmp_path):
    """A 1-layer model has no head pairs: the table is a header only, the figure says so."""
    table = tmp_path / "composition.csv"
    write_table(composition().iloc[:0], table)
    out = tmp_path / "composition.png"
    plot_induction("composition", table, out)
    assert_figure_pair(out)
    texts = svg_texts(out)
    assert "composition needs ≥ 2 layers" in texts and "(the table has no head pairs)" in texts
    assert b"<image" not in out.with_suffix(".svg").read_bytes()  # no heatmap drawn
    fig = composition_figure(read_figure_table(table))
    (ax,) = fig.axes  # one blank panel: no heatmaps, no colorbars
    assert not ax.axison and not ax.images
    assert "composition needs ≥ 2 layers" in ax.texts[0].get_text()
    # and it is not the figure of a two-layer model
    write_table(composition(), table)
    two_layers = tmp_path / "two_layers.png"
    plot_induction("composition", table, two_layers)
    assert "composition needs ≥ 2 layers" not in svg_texts(two_layers)
    assert b"<image" in two_layers.with_suffix(".svg").read_bytes()


def _boxes(fig):
    """(panel title, layer, head) of each head drawn with a red box."""
    return sorted(
        (ax.get_title(), round(patch.get_y() + 0.5), round(patch.get_x() + 0.5))
        for ax in fig.axes
        for patch in ax.patches
        if isinstance(patch, Rectangle) and not patch.get_fill()
    )


@pytest.mark.parametrize("threshold", [0.3, 0.9])
def test_head_scores_boxes_the_heads_above_threshold(threshold, tmp_path):
    df = head_scores()
    table = tmp_path / "head_scores.csv"
    write_table(df, table)
    labels = {
        "previous_token": "previous-token score",
        "duplicate_token": "duplicate-token score",
        "induction": "induction score",
    }
    above = df[df["value"] > threshold]
    expected = sorted(zip(above["score"].map(labels), above["layer"], above["head"], strict=True))
    fig = head_scores_figure(read_figure_table(table), threshold=threshold)
    assert _boxes(fig) == expected
    assert f"boxed: score > {threshold:g} (detection threshold)" in fig.get_suptitle()
    out = tmp_path / "head_scores.png"
    plot_induction("head_scores", table, out, threshold=threshold)
    svg = out.with_suffix(".svg").read_text(encoding="utf-8")
    assert svg.count(f"stroke: {TAB_RED}") == len(expected)  # one red outline per box
    assert f"boxed: score > {threshold:g} (detection threshold)" in svg_texts(out)


def test_threshold_changes_the_head_score_boxes(tmp_path):
    table = tmp_path / "head_scores.csv"
    write_table(head_scores(), table)
    low, high = tmp_path / "low.png", tmp_path / "high.png"
    plot_induction("head_scores", table, low, threshold=0.3)
    plot_induction("head_scores", table, high, threshold=0.9)
    assert low.read_bytes() != high.read_bytes()
    assert low.with_suffix(".svg").read_bytes() != high.with_suffix(".svg").read_bytes()
    assert f"stroke: {TAB_RED}" not in high.with_suffix(".svg").read_text(encoding="utf-8")
    for out, threshold in ((low, 0.3), (high, 0.9)):
        first = figure_bytes(out)
        plot_induction("head_scores", table, out, threshold=threshold)
        assert figure_bytes(out) == first


def test_loss_by_position_reference_line_at_ln_d_vocab(tmp_path):
    """``--option d_vocab=20`` adds the uniform-guess loss ln(20) as a dashed line."""
    table = tmp_path / "loss.csv"
    write_table(loss_by_position(), table)
    df = read_figure_table(table)
    (ax,) = loss_by_position_figure(df, d_vocab=20).axes
    (line,) = [line for line in ax.lines if line.get_label().startswith("uniform guess")]
    np.testing.assert_allclose(line.get_ydata(), [math.log(20)] * 2)
    assert line.get_linestyle() == "--"
    assert line.get_label() == "uniform guess ln(20) = 3.00"
    (plain,) = loss_by_position_figure(df).axes
    assert [line.get_label() for line in plain.lines] == [
        "first half (random): mean 3.00",
        "repeated half: mean 0.40",
    ]
    with_line, without = tmp_path / "with.png", tmp_path / "without.png"
    plot_induction("loss_by_position", table, with_line, d_vocab=20)
    plot_induction("loss_by_position", table, without)
    assert "uniform guess ln(20) = 3.00" in svg_texts(with_line)
    assert not [text for text in svg_texts(without) if text.startswith("uniform guess")]
    assert with_line.read_bytes() != without.read_bytes()


def test_loss_by_position_refuses_a_vocabulary_below_two(tmp_path):
    table = tmp_path / "loss.csv"
    write_table(loss_by_position(), table)
    out = tmp_path / "loss.png"
    with pytest.raises(ValueError, match="d_vocab must be >= 2, got 1"):
        plot_induction("loss_by_position", table, out, d_vocab=1)
    assert_nothing_written(tmp_path)


def _phase_marks(fig):
    """x of the dashed phase-change line in each panel, and the threshold line's y in (a)."""

    def styled(ax, style):
        return [line for line in ax.lines if line.get_linestyle() == style]

    marks = [
        sorted({float(x) for line in styled(ax, "--") for x in line.get_xdata()}) for ax in fig.axes
    ]
    return marks, [float(line.get_ydata()[0]) for line in styled(fig.axes[0], ":")]


def test_threshold_changes_the_phase_change_mark(tmp_path):
    table = tmp_path / "phase.csv"
    write_table(phase_change(), table)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    plot_induction("phase_change", table, a)
    plot_induction("phase_change", table, b, threshold=0.9)
    assert a.read_bytes() != b.read_bytes()
    # default threshold 0.4: the induction score (0.05 -> 0.7) crosses it at step 300
    assert "phase change at step 300" in svg_texts(a) and "threshold 0.4" in svg_texts(a)
    assert "induction score never exceeds 0.9" in svg_texts(b)
    assert not [text for text in svg_texts(b) if text.startswith("phase change")]
    df = read_figure_table(table)
    assert _phase_marks(phase_change_figure(df)) == ([[300.0]] * 3, [0.4])
    assert _phase_marks(phase_change_figure(df, threshold=0.9)) == ([[], [], []], [0.9])
    for out, extra in ((a, {}), (b, {"threshold": 0.9})):
        first = figure_bytes(out)
        plot_induction("phase_change", table, out, **extra)
        assert figure_bytes(out) == first  # byte-identical rerun, PNG and SVG


# --- language model -------------------------------------------------------------------------
def _language_model_tables(tmp_path):
    steps = np.arange(0, 101, 10)
    log = pd.DataFrame({"step": steps, "loss": 8 - 0.04 * steps, "lr": 1e-3})
    log["val_loss"] = np.where(steps % 50 == 0, 8.2 - 0.04 * steps, np.nan)
    losses = pd.DataFrame(
        {
            "name": ["m", "uniform", "unigram", "bigram"],
            "kind": ["model"] + ["baseline"] * 3,
            "loss": [4.1, 8.3, 6.3, 4.8],
            "margin": [0, 4.2, 2.2, 0.7],
            "smoothing": "",
            "tokens": 100,
        }  # fmt: skip
    )
    lens = pd.DataFrame(
        {
            "layer": [0, 1, 2],
            "loss": [6.0, 4.5, 4.1],
            "kl_to_final": [2.0, 0.3, 0.0],
            "top1_agreement": [0.1, 0.6, 1.0],
        }  # fmt: skip
    )
    rows = [("embed", "embed", -1, -1, 0.5), ("pos_embed", "pos_embed", -1, -1, -0.1)]
    rows += [(f"L{i}H{h}", "head", i, h, 0.1 * (i - h)) for i in LAYERS for h in HEADS]
    rows += [(f"L{i}.mlp_out", "mlp", i, -1, 0.8) for i in LAYERS]
    dla = pd.DataFrame(rows, columns=["component", "kind", "layer", "head", "mean"])
    paths = {}
    for name, df in (("log", log), ("losses", losses), ("lens", lens), ("dla", dla)):
        paths[name] = tmp_path / f"{name}.csv"
        write_table(df, paths[name])
    return paths


def test_language_model_figures_draw_from_their_tables(tmp_path):
    paths = _language_model_tables(tmp_path)
    drawn = {
        "loss_curve": {"log": paths["log"], "losses": paths["losses"]},
        "logit_lens": {"table": paths["lens"]},
        "logit_attribution": {"table": paths["dla"]},
    }
    for name, tables in drawn.items():
        out = tmp_path / f"{name}.png"
        plot(f"language_model.{name}", tables, out, "--option", "model=m")
        texts = svg_texts(out)
        assert any(text.startswith("m: ") for text in texts), (name, texts)
    assert "bigram baseline (4.80)" in svg_texts(tmp_path / "loss_curve.png")
    assert "final validation loss 4.100" in svg_texts(tmp_path / "loss_curve.png")
    assert "L1.mlp_out" in svg_texts(tmp_path / "logit_attribution.png")


def test_a_lens_table_without_its_columns_is_refused(tmp_path):
    bad = tmp_path / "lens.csv"
    write_table(pd.DataFrame({"layer": [0], "loss": [1.0]}), bad)
    with pytest.raises(ValueError, match="kl_to_final"):
        plot("language_model.logit_lens", {"table": bad}, tmp_path / "f.png")
    assert_nothing_written(tmp_path)


# --- the generic step's own flags ---------------------------------------------------------------
def _registry(experiment):
    return importlib.import_module(f"mechflow.experiments.{experiment}.figures").FIGURES


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_registry_matches_the_figure_functions(experiment):
    """Every table is a positional argument in order, its source keyword and each option exist."""
    for name, kind in _registry(experiment).items():
        params = list(inspect.signature(kind.draw).parameters.values())
        positional = [p for p in params if p.default is inspect.Parameter.empty]
        assert len(positional) == len(kind.tables), name
        keywords = {p.name for p in params[len(kind.tables) :]}
        assert "title" in keywords, name
        assert {kw for kw in kind.tables.values() if kw} <= keywords, name
        assert set(kind.options) <= keywords, name


def test_unknown_experiment(tmp_path):
    table = tmp_path / "t.csv"
    write_table(head_scores(), table)
    with pytest.raises(ValueError, match=r"--figure 'nope\.head_scores': no experiment 'nope'"):
        plot("nope.head_scores", {"table": table}, tmp_path / "f.png")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_unknown_figure_lists_the_known_ones(experiment, tmp_path):
    known = sorted(_registry(experiment))
    with pytest.raises(ValueError) as err:
        plot(f"{experiment}.nope", {"table": tmp_path / "t.csv"}, tmp_path / "f.png")
    assert str(err.value) == f"--figure '{experiment}.nope': {experiment} has figures {known}"
    assert_nothing_written(tmp_path)


def test_missing_table_name(tmp_path):
    log = tmp_path / "train_log.csv"
    log.write_text("epoch\n")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "--table: grokking.grokking_curves takes tables ['log', 'phases'], got ['log']"
        ),
    ):
        plot("grokking.grokking_curves", {"log": log}, tmp_path / "f.png")
    assert_nothing_written(tmp_path)


def test_extra_table_name(tmp_path):
    table = tmp_path / "t.csv"
    write_table(head_scores(), table)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "--table: induction.head_scores takes tables ['table'], got ['phases', 'table']"
        ),
    ):
        plot("induction.head_scores", {"table": table, "phases": table}, tmp_path / "f.png")
    assert_nothing_written(tmp_path)


def test_unknown_option(tmp_path):
    table = tmp_path / "t.csv"
    write_table(head_ablation(), table)
    with pytest.raises(
        ValueError,
        match=re.escape("--option ['threshold']: induction.head_ablation takes options []"),
    ):
        plot_induction("head_ablation", table, tmp_path / "f.png", threshold=0.3)
    with pytest.raises(
        ValueError,
        match=re.escape("--option ['d_vocab']: induction.head_scores takes options ['threshold']"),
    ):
        plot_induction("head_scores", table, tmp_path / "f.png", d_vocab=20)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("name", "option", "match"),
    [
        ("head_scores", "threshold=high", "--option threshold='high': not a float"),
        ("head_scores", "threshold=", "--option threshold='': not a float"),
        ("loss_by_position", "d_vocab=2.5", "--option d_vocab='2.5': not a int"),
    ],
)
def test_non_numeric_option(name, option, match, tmp_path):
    table = tmp_path / "t.csv"
    write_table(STEPS[name](), table)
    with pytest.raises(ValueError, match=re.escape(match)):
        plot(f"induction.{name}", {"table": table}, tmp_path / "f.png", "--option", option)
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "f.svg").exists()


@pytest.mark.parametrize(
    ("flag", "item"),
    [("--table", "t.csv"), ("--table", "=t.csv"), ("--option", "threshold"), ("--option", "=0.3")],
)
def test_malformed_name_value(flag, item, tmp_path):
    table = tmp_path / "t.csv"
    write_table(head_scores(), table)
    argv = ["--figure", "induction.head_scores", "--out", str(tmp_path / "f.png")]
    argv += ["--table", f"table={table}", flag, item]
    with pytest.raises(ValueError, match=re.escape(f"{flag} {item!r}: expected NAME=VALUE")):
        plot_figure.main(argv)
    assert not (tmp_path / "f.png").exists()


def test_a_table_given_twice_is_concatenated(tmp_path):
    """sae_frontier with two ``--table metrics=`` files draws the sweep of both."""
    from mechflow.experiments.saes.figures import sae_frontier_figure

    hook = "blocks.0.hook_resid_post"
    rows = [
        (f"{arch}_{i}", hook, arch, metric, value)
        for arch, points in (
            ("relu", [(3.0, 0.6, 0.4), (20.0, 0.95, 0.05)]),
            ("topk", [(4.0, 0.75, 0.3)]),
        )
        for i, (l0, ce, fvu) in enumerate(points)
        for metric, value in (("l0", l0), ("ce_recovered_zero", ce), ("fvu", fvu))
    ]
    metrics = pd.DataFrame(rows, columns=["sae", "hook", "architecture", "metric", "value"])
    relu, topk = tmp_path / "relu.csv", tmp_path / "topk.csv"
    write_table(metrics[metrics["architecture"] == "relu"], relu)
    write_table(metrics[metrics["architecture"] == "topk"], topk)
    both, one = tmp_path / "both.png", tmp_path / "one.png"
    plot("saes.sae_frontier", {"metrics": [relu, topk]}, both)
    plot("saes.sae_frontier", {"metrics": relu}, one)
    assert f"SAE sparsity–fidelity frontier ({hook}, 3 SAEs)" in svg_texts(both)
    assert f"SAE sparsity–fidelity frontier ({hook}, 2 SAEs)" in svg_texts(one)
    expected = tmp_path / "expected" / "frontier.png"
    expected.parent.mkdir()
    concatenated = pd.concat([read_figure_table(relu), read_figure_table(topk)], ignore_index=True)
    save_figure(sae_frontier_figure(concatenated), expected)
    assert figure_bytes(expected) == figure_bytes(both)
