"""The OthelloGPT figures, drawn through the generic figure step from small synthetic tables."""

from __future__ import annotations

from functools import partial

import figure_helpers
import numpy as np
import pandas as pd
import pytest
from figure_helpers import svg_texts, written

from mechflow.experiments.othello import figures as F
from mechflow.experiments.othello.figures import FIGURES

MODEL, CONTROL = "othello-6x6", "othello-6x6-random"
N_LAYERS, BEST = 4, 3  # probes read layers 0..4; the relative probes peak at layer 3
HOOK = "blocks.2.hook_resid_post"
SCALES = (0.0, 0.5, 1.0, 2.0)
MOVE = 6


def legal(model=MODEL, rate=0.95):
    positions = np.arange(8)
    return pd.DataFrame(
        {
            "model": model,
            "position": positions,
            "positions": 100 - 5 * positions,
            "top1_legal": rate - 0.01 * positions,
            "legal_mass": rate - 0.02 * positions,
            "cross_entropy": 2.0 + 0.1 * positions,
            "kl_to_uniform_legal": (1 - rate) + 0.05 * positions,
            "uniform_legal_entropy": 1.5 + 0.01 * positions,
        }
    )


def accuracy(label, condition, layer):
    if condition == "shuffled labels":
        return 0.5
    peak = {"relative": 0.97, "board": 0.7, "legal": 0.9, "flipped": 0.8}[label]
    if condition == "random init":
        peak -= 0.2
    if label == "relative":
        return peak - 0.05 * abs(layer - BEST)  # the maximum at BEST, nowhere else
    return peak - 0.02 * (N_LAYERS - layer)


def probe_summary():
    rows = [
        {"model": CONTROL if condition == "random init" else MODEL, "condition": condition,
         "layer": layer, "label": label, "accuracy": accuracy(label, condition, layer),
         "baseline": 0.5 + 0.01 * i, "worst_square": 0.4, "probes": 36}
        for condition in ("trained", "shuffled labels", "random init")
        for i, label in enumerate(("relative", "board", "legal", "flipped"))
        for layer in range(N_LAYERS + 1)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def probe_boards(size=6, positions=(5, 12, 20)):
    """A true board per position and random probabilities that differ at every layer."""
    rng = np.random.default_rng(size)
    n_sq, rows = size * size, []
    for position in positions:
        relative = rng.integers(0, 3, n_sq)
        board = np.where(relative == 0, 0, 1 + (relative + position) % 2)
        for layer in range(N_LAYERS + 1):
            rel = rng.dirichlet(np.ones(3), n_sq)
            col = rng.dirichlet(np.ones(3), n_sq)
            rows += [
                {"game": 7, "position": position, "layer": layer, "square": s,
                 "relative": relative[s], "board": board[s], "p_empty": rel[s, 0],
                 "p_mine": rel[s, 1], "p_theirs": rel[s, 2], "p_black": col[s, 1],
                 "p_white": col[s, 2]}
                for s in range(n_sq)
            ]  # fmt: skip
    return pd.DataFrame(rows)


def interventions():
    rows = [{"hook": HOOK, "condition": "none", "scale": np.nan, "success": 0.05,
             "unchanged": 0.95, "mean_margin": -3.0}]  # fmt: skip
    for scale in SCALES:
        rows.append({"hook": HOOK, "condition": "random", "scale": scale, "success": 0.06,
                     "unchanged": 0.9, "mean_margin": -2.5 + 0.1 * scale})  # fmt: skip
        rows.append({"hook": HOOK, "condition": "probe", "scale": scale,
                     "success": 0.2 + 0.3 * scale, "unchanged": 0.5,
                     "mean_margin": 3.0 * scale})  # fmt: skip
    df = pd.DataFrame(rows)
    df.insert(3, "edits", 120)
    return df


def move_attribution(n_layers=3, n_heads=4):
    rng = np.random.default_rng(2)
    rows = [("embed", "embed", -1, -1), ("pos_embed", "pos_embed", -1, -1)]
    for layer in range(n_layers):
        rows += [(f"L{layer}H{h}", "head", layer, h) for h in range(n_heads)]
        rows += [(f"L{layer}.b_O", "attn_bias", layer, -1), (f"L{layer}.mlp_out", "mlp", layer, -1)]
    rows += [("ln_final.b", "ln_bias", -1, -1), ("b_U", "unembed_bias", -1, -1)]
    df = pd.DataFrame(rows, columns=["component", "kind", "layer", "head"])
    return df.assign(mean=rng.normal(size=len(df)), sd=rng.uniform(0.1, 0.5, len(df)), rows=300)


def move_patching(n_layers=3, n_heads=4, kinds=("resid_pre", "attn_out", "mlp_out", "z")):
    rng = np.random.default_rng(3)
    rows = []
    for layer in range(n_layers):
        if "resid_pre" in kinds:
            rows += [("resid_pre", layer, -1, pos) for pos in range(MOVE + 1)]
        rows += [(kind, layer, -1, MOVE) for kind in ("attn_out", "mlp_out") if kind in kinds]
        if "z" in kinds:
            rows += [("z", layer, head, -1) for head in range(n_heads)]
    df = pd.DataFrame(rows, columns=["kind", "layer", "head", "position"])
    df.insert(0, "move", MOVE)
    return df.assign(effect=rng.uniform(-0.2, 1.1, len(df)), games=40, clean_score=2.5,
                     corrupted_score=-1.0)  # fmt: skip


NEURONS = ((1, 17), (1, 4))  # (layer, neuron), by rank


def neurons(size=6):
    rng = np.random.default_rng(4)
    rows = [
        {"layer": layer, "neuron": neuron, "rank": rank, "score": 0.6 - 0.1 * rank, "square": s,
         "direction": direction, "cosine": rng.uniform(-0.5, 0.5)}
        for rank, (layer, neuron) in enumerate(NEURONS)
        for direction in ("theirs_minus_mine", "empty")
        for s in range(size * size)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def neuron_activations(size=6, codes=False):
    rng = np.random.default_rng(5)
    rows = [
        {"layer": layer, "neuron": neuron, "label": "relative", "square": s,
         "state": i if codes else state, "mean_activation": rng.normal(), "rows": 50}
        for layer, neuron in NEURONS
        for s in range(size * size)
        for i, state in enumerate(("empty", "mine", "theirs"))
    ]  # fmt: skip
    df = pd.DataFrame(rows)
    centre = df["square"].isin([14, 15]) & (df["state"].isin([0, "empty"]))
    df.loc[centre, ["mean_activation", "rows"]] = [np.nan, 0]  # a centre square is never empty
    return df


TABLES = {  # figure -> {table name: its test table}
    "legal_moves": {"legal": legal, "control_legal": lambda: legal(CONTROL, 0.3)},
    "probe_accuracy": {"probe_summary": probe_summary},
    "boards": {"probe_boards": probe_boards, "probe_summary": probe_summary},
    "interventions": {"interventions": interventions},
    "attribution": {"move_attribution": move_attribution, "move_patching": move_patching},
    "neurons": {"neurons": neurons, "neuron_activations": neuron_activations},
}


plot = partial(figure_helpers.plot, "othello")
draw = partial(figure_helpers.draw, FIGURES)


def lines_by_gid(fig):
    return {line.get_gid(): line for ax in fig.axes for line in ax.lines if line.get_gid()}


def board_axes(fig):
    """Axes drawing one board (a square image), in drawing order."""
    return [ax for ax in fig.axes if ax.images and ax.images[0].get_array().shape[0] in (6, 8)]


def test_columns_and_categories_match_their_producers():
    from mechflow.experiments.othello import attribution, evaluate, interventions, probing
    from mechflow.experiments.othello.labels import CLASSES

    assert F.LEGAL_COLUMNS == ("model", "position", "positions", *evaluate.SUMMARY_COLUMNS[2:])
    assert tuple(F.DLA_COLUMNS) == tuple(attribution.DLA_COLUMNS)
    assert tuple(F.PATCH_COLUMNS) == tuple(attribution.PATCH_COLUMNS)
    assert F.PATCH_KINDS == attribution.PATCH_KINDS
    assert tuple(F.DIRECTIONS) == attribution.DIRECTIONS
    assert tuple(F.NEURON_COLUMNS) == tuple(attribution.NEURON_COLUMNS)
    assert tuple(F.STATE_COLUMNS) == tuple(attribution.STATE_COLUMNS)
    assert set(F.INTERVENTION_COLUMNS) <= set(interventions.TABLE_COLUMNS)
    assert tuple(F.EDITS) == interventions.CONDITIONS
    assert tuple(F.PROBE_LABELS) == probing.LABELS
    assert F.RELATIVE == CLASSES["relative"][0]
    per_square = pd.DataFrame(
        {"model": MODEL, "condition": "trained", "layer": 0, "label": "relative",
         "square": [0, 1], "accuracy": [0.9, 0.8], "baseline": 0.5}
    )  # fmt: skip
    assert tuple(probing.summarise(per_square).columns) == F.SUMMARY_COLUMNS


def test_square_names_follow_the_data_module():
    # mechflow.data.othello: white starts on d4 and e5, squares 27 and 36 of 8x8
    assert [F.square_name(s, 8) for s in (0, 7, 27, 36, 63)] == ["A1", "H1", "D4", "E5", "H8"]
    assert [F.square_name(s, 6) for s in (0, 6, 35)] == ["A1", "A2", "F6"]


@pytest.mark.parametrize("figure", TABLES)
def test_each_figure_writes_png_and_svg_titled_with_the_model(figure, tmp_path):
    assert dict(FIGURES[figure].tables).keys() == TABLES[figure].keys()
    assert FIGURES[figure].options == {"model": str}
    out = tmp_path / "figs" / f"{figure}.png"
    plot(figure, written(tmp_path, TABLES[figure]), out, "--option", "model=OthelloGPT 6x6")
    assert out.read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in out.with_suffix(".svg").read_bytes()[:1000]
    assert any(text.startswith("OthelloGPT 6x6: ") for text in svg_texts(out))


@pytest.mark.parametrize(
    ("figure", "table", "column"),
    [
        ("legal_moves", "legal", "top1_legal"),
        ("legal_moves", "control_legal", "kl_to_uniform_legal"),
        ("probe_accuracy", "probe_summary", "baseline"),
        ("boards", "probe_boards", "p_theirs"),
        ("boards", "probe_summary", "accuracy"),
        ("interventions", "interventions", "mean_margin"),
        ("attribution", "move_attribution", "sd"),
        ("attribution", "move_patching", "effect"),
        ("neurons", "neurons", "cosine"),
        ("neurons", "neuron_activations", "state"),
    ],
)
def test_a_missing_column_names_table_and_column(figure, table, column, tmp_path):
    tables = dict(TABLES[figure])
    tables[table] = tables[table]().drop(columns=[column])
    out = tmp_path / "f.png"
    with pytest.raises(ValueError, match=rf"{table}\.csv: missing column\(s\) '{column}'"):
        plot(figure, written(tmp_path, tables), out)
    assert not out.exists() and not out.with_suffix(".svg").exists()


def test_legal_moves_draws_both_models_by_position(tmp_path):
    fig = draw("legal_moves", written(tmp_path, TABLES["legal_moves"]))
    lines = lines_by_gid(fig)
    for what, table in (("trained", legal()), ("random init", legal(CONTROL, 0.3))):
        for column in ("top1_legal", "legal_mass", "kl_to_uniform_legal"):
            line = lines[f"{what}/{column}"]
            np.testing.assert_allclose(line.get_xdata(), table["position"])
            np.testing.assert_allclose(line.get_ydata(), table[column])
    np.testing.assert_allclose(
        lines["uniform_legal_entropy"].get_ydata(), legal()["uniform_legal_entropy"]
    )
    labels = {line.get_label() for line in lines.values()}
    assert f"random init ({CONTROL}): top-1 legal" in labels


def test_probe_accuracy_draws_each_label_and_condition_by_layer(tmp_path):
    fig = draw("probe_accuracy", written(tmp_path, TABLES["probe_accuracy"]))
    board_ax, other_ax = fig.axes
    assert {line.get_gid().split("/")[0] for line in board_ax.lines} == {"relative", "board"}
    assert {line.get_gid().split("/")[0] for line in other_ax.lines} == {"legal", "flipped"}
    lines, summary = lines_by_gid(fig), probe_summary()
    for (label, condition), rows in summary.groupby(["label", "condition"]):
        line = lines[f"{label}/{condition}"]
        np.testing.assert_array_equal(line.get_xdata(), range(N_LAYERS + 1))
        np.testing.assert_allclose(line.get_ydata(), rows.sort_values("layer")["accuracy"])
        assert (line.get_linestyle() == "-") == (condition == "trained")  # controls dashed
    for label, rows in summary[summary["condition"] == "trained"].groupby("label"):
        baseline = lines[f"{label}/baseline"]
        np.testing.assert_allclose(baseline.get_ydata(), rows.sort_values("layer")["baseline"])


def test_probe_accuracy_refuses_an_unknown_condition(tmp_path):
    df = probe_summary()
    df.loc[0, "condition"] = "untrained"
    with pytest.raises(ValueError, match=r"probe_summary\.csv: column 'condition' has"):
        plot("probe_accuracy", written(tmp_path, {"probe_summary": df}), tmp_path / "f.png")


def test_best_probe_layer_is_the_most_accurate_trained_relative_one():
    assert F.best_probe_layer(probe_summary()) == (BEST, pytest.approx(0.97))
    df = probe_summary()
    # a control or another label more accurate elsewhere changes nothing
    df.loc[(df["condition"] == "random init") & (df["layer"] == 1), "accuracy"] = 0.999
    df.loc[(df["label"] == "board") & (df["layer"] == 0), "accuracy"] = 0.999
    assert F.best_probe_layer(df)[0] == BEST


@pytest.mark.parametrize("size", [6, 8])
def test_boards_show_the_true_board_and_the_best_layers_probes(size, tmp_path):
    boards = probe_boards(size)
    paths = written(tmp_path, {"probe_boards": boards, "probe_summary": probe_summary()})
    fig = draw("boards", paths)
    axes = board_axes(fig)
    positions = sorted(boards["position"].unique())
    assert len(axes) == 2 * len(positions)
    true_axes, probe_axes = axes[: len(positions)], axes[len(positions) :]
    at = boards[boards["layer"] == BEST]
    for position, true_ax, probe_ax in zip(positions, true_axes, probe_axes, strict=True):
        rows = at[at["position"] == position].sort_values("square")
        shaped = {c: rows[c].to_numpy().reshape(size, size) for c in rows.columns}
        np.testing.assert_array_equal(true_ax.images[0].get_array(), shaped["relative"])
        image = probe_ax.images[0]
        np.testing.assert_allclose(image.get_array(), shaped["p_mine"] - shaped["p_theirs"])
        np.testing.assert_allclose(image.get_alpha(), 1 - shaped["p_empty"])
        assert (image.norm.vmin, image.norm.vmax) == (-1.0, 1.0)
        # a cross on exactly the squares whose most probable state is not the true one
        predicted = rows[["p_empty", "p_mine", "p_theirs"]].to_numpy().argmax(1)
        wrong = np.flatnonzero(predicted != rows["relative"].to_numpy())
        (crosses,) = [c for c in probe_ax.collections if c.get_gid() == f"wrong-{position}"]
        offsets = np.asarray(crosses.get_offsets()).reshape(-1, 2)
        assert sorted(map(tuple, offsets.astype(int))) == sorted(
            (s % size, s // size) for s in wrong
        )
    letters = [chr(ord("A") + c) for c in range(size)]
    assert [t.get_text() for t in true_axes[0].get_xticklabels()] == letters
    assert [t.get_text() for t in true_axes[0].get_yticklabels()] == [
        str(r + 1) for r in range(size)
    ]
    assert probe_axes[0].get_ylabel() == f"probes, layer {BEST}"


def test_boards_refuse_a_table_without_the_best_layer(tmp_path):
    boards = probe_boards()
    tables = {"probe_boards": boards[boards["layer"] != BEST], "probe_summary": probe_summary()}
    with pytest.raises(ValueError, match=rf"probe_boards\.csv: no rows at layer {BEST}"):
        plot("boards", written(tmp_path, tables), tmp_path / "f.png")


def test_boards_without_rows_are_a_placeholder(tmp_path):
    empty = probe_boards().iloc[:0]
    out = tmp_path / "f.png"
    plot("boards", written(tmp_path, {"probe_boards": empty, "probe_summary": probe_summary}), out)
    assert "no example board: the table has no rows" in svg_texts(out)


def test_interventions_draw_success_and_margin_against_scale(tmp_path):
    fig = draw("interventions", written(tmp_path, TABLES["interventions"]))
    success_ax, margin_ax = fig.axes
    df = interventions()
    for ax, column in ((success_ax, "success"), (margin_ax, "mean_margin")):
        lines = {line.get_gid(): line for line in ax.lines if line.get_gid()}
        assert set(lines) == {f"{HOOK}/probe", f"{HOOK}/random", f"{HOOK}/none"}
        for condition in ("probe", "random"):
            rows = df[df["condition"] == condition].sort_values("scale")
            np.testing.assert_allclose(lines[f"{HOOK}/{condition}"].get_xdata(), SCALES)
            np.testing.assert_allclose(lines[f"{HOOK}/{condition}"].get_ydata(), rows[column])
        none = df.loc[df["condition"] == "none", column].item()
        np.testing.assert_allclose(lines[f"{HOOK}/none"].get_ydata(), [none, none])
    out = tmp_path / "f.png"
    plot("interventions", written(tmp_path, TABLES["interventions"]), out)
    assert f"editing the board the probes read at {HOOK}" in svg_texts(out)


def test_interventions_refuse_a_scaled_no_edit(tmp_path):
    df = interventions()
    df.loc[df["condition"] == "none", "scale"] = 1.0
    with pytest.raises(ValueError, match=r"interventions\.csv: a 'none' row has a scale"):
        plot("interventions", written(tmp_path, {"interventions": df}), tmp_path / "f.png")


def test_attribution_draws_dla_and_every_patching_kind(tmp_path):
    dla, patching = move_attribution(), move_patching()
    fig = draw("attribution", written(tmp_path, TABLES["attribution"]))
    titled = {ax.get_title(loc="left"): ax for ax in fig.axes}
    others = dla[dla["kind"] != "head"]
    bars = titled["embeddings, MLPs and biases"]
    np.testing.assert_allclose([p.get_width() for p in bars.patches], others["mean"])
    assert [t.get_text() for t in bars.get_yticklabels()] == others["component"].tolist()
    heads = dla[dla["kind"] == "head"]
    np.testing.assert_allclose(
        titled["heads"].images[0].get_array(), heads["mean"].to_numpy().reshape(3, 4)
    )
    z = patching[patching["kind"] == "z"]
    image = titled["heads, every position (z)"].images[0]
    np.testing.assert_allclose(image.get_array(), z["effect"].to_numpy().reshape(3, 4))
    bound = max(1.0, patching["effect"].abs().max())  # one scale, symmetric, at least [-1, 1]
    assert (image.norm.vmin, image.norm.vmax) == pytest.approx((-bound, bound))
    resid = patching[patching["kind"] == "resid_pre"]
    np.testing.assert_allclose(
        titled["residual stream (resid_pre)"].images[0].get_array(),
        resid["effect"].to_numpy().reshape(3, MOVE + 1),
    )
    outputs = titled[f"block outputs at position {MOVE}"]
    heights = [p.get_height() for p in outputs.patches]
    attn, mlp = (
        patching.loc[patching["kind"] == k, "effect"].tolist() for k in ("attn_out", "mlp_out")
    )
    np.testing.assert_allclose(heights, attn + mlp)


def test_attribution_of_an_attention_only_model_without_patching(tmp_path):
    dla = move_attribution()
    dla = dla[dla["kind"] != "mlp"]
    paths = written(tmp_path, {"move_attribution": dla, "move_patching": move_patching().iloc[:0]})
    out = tmp_path / "f.png"
    plot("attribution", paths, out)
    assert "no patching results: the table has no rows" in svg_texts(out)
    only_z = move_patching(kinds=("attn_out", "z"))
    fig = draw("attribution", written(tmp_path, {"move_attribution": dla, "move_patching": only_z}))
    titles = {ax.get_title(loc="left") for ax in fig.axes}
    assert "residual stream (resid_pre)" not in titles
    assert {"heads, every position (z)", f"block outputs at position {MOVE}"} <= titles


@pytest.mark.parametrize(("size", "codes"), [(6, False), (8, False), (6, True)])
def test_neurons_show_cosines_and_activations_per_square(size, codes, tmp_path):
    cosines, acts = neurons(size), neuron_activations(size, codes)
    tables = {"neurons": cosines, "neuron_activations": acts}
    fig = draw("neurons", written(tmp_path, tables))
    axes = board_axes(fig)
    assert len(axes) == len(NEURONS) * 5  # two directions, three states
    states = ("empty", "mine", "theirs")
    for n, (layer, neuron) in enumerate(NEURONS):
        row = axes[5 * n : 5 * n + 5]
        mine = cosines[(cosines["layer"] == layer) & (cosines["neuron"] == neuron)]
        for ax, direction in zip(row, ("theirs_minus_mine", "empty"), strict=False):
            values = mine[mine["direction"] == direction].sort_values("square")["cosine"]
            np.testing.assert_allclose(
                ax.images[0].get_array(), values.to_numpy().reshape(size, size)
            )
        theirs = acts[(acts["layer"] == layer) & (acts["neuron"] == neuron)]
        for i, (ax, state) in enumerate(zip(row[2:], states, strict=True)):
            rows = theirs[theirs["state"] == (i if codes else state)].sort_values("square")
            np.testing.assert_allclose(
                np.ma.filled(ax.images[0].get_array(), np.nan),
                rows["mean_activation"].to_numpy().reshape(size, size),
            )
            assert ax.get_title() == f"activation | {state}"
    subtitles = [sub._suptitle.get_text() for sub in fig.subfigs]
    assert subtitles[0].startswith(f"L{NEURONS[0][0]} neuron {NEURONS[0][1]}: 0.60")


def test_neurons_without_a_neuron_are_a_placeholder(tmp_path):
    tables = {"neurons": neurons().iloc[:0], "neuron_activations": neuron_activations().iloc[:0]}
    out = tmp_path / "f.png"
    plot("neurons", written(tmp_path, tables), out)
    assert "an attention-only model has none)" in " ".join(svg_texts(out))


def test_neurons_refuse_activations_of_other_neurons(tmp_path):
    acts = neuron_activations()
    acts.loc[acts["neuron"] == 4, "neuron"] = 5
    tables = {"neurons": neurons(), "neuron_activations": acts}
    with pytest.raises(ValueError, match=r"neuron_activations\.csv: activations of neurons"):
        plot("neurons", written(tmp_path, tables), tmp_path / "f.png")
