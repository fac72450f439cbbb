"""The IOI figures, drawn through the generic figure step from small synthetic tables."""

from __future__ import annotations

from functools import partial

import figure_helpers
import numpy as np
import pandas as pd
import pytest
from figure_helpers import svg_texts, written
from matplotlib.patches import FancyArrowPatch, Rectangle

from mechflow.experiments.ioi.figures import CLASS_STYLE, FIGURES

MODEL = "ioi-4l"
POSITIONS = ("when", "IO", "and", "S1", "S2", "END")
# (layer, head) -> class; the rest of a 4 x 3 model is in no class
CLASSES = {
    (0, 0): "previous-token",
    (0, 1): "duplicate-token",
    (1, 0): "induction",
    (2, 0): "S-inhibition",
    (2, 1): "S suppression",
    (2, 2): "other",
    (3, 0): "name mover",
    (3, 1): "negative name mover",
    (3, 2): "backup name mover",
}
UNCLASSIFIED = ("0.2", "1.1", "1.2")


def head_classes(classes=CLASSES):
    rng = np.random.default_rng(0)
    rows = []
    for layer in range(4):
        for head in range(3):
            cls = classes.get((layer, head), "")
            movers = cls in ("name mover", "backup name mover")
            rows.append(
                {"model": MODEL, "layer": layer, "head": head, "class": cls,
                 "dla_io": 2.0 if movers else -1.5 if cls == "negative name mover" else 0.1,
                 "dla_s": -1.0 if cls == "S suppression" else 0.05, "dla_diff": rng.normal(),
                 "att_end_io": 0.8 if movers else 0.1, "att_end_s1": 0.05,
                 "att_end_s2": 0.6 if cls == "S-inhibition" else 0.1, "att_s1p1_s1": 0.2,
                 "att_s2_s1": 0.3, "att_s2_s1p1": 0.4, "dla_io_movers_ablated": np.nan,
                 "via_movers_q": 0.1 * head, "via_inhibitors_qkv": 0.2 * layer,
                 "via_induction_k": 0.3, "to_logits": 0.1 * layer + 0.05 * head}
            )  # fmt: skip
    return pd.DataFrame(rows)


def patching():
    rng = np.random.default_rng(1)
    rows = [
        (MODEL, kind, layer, -1, pos, name, rng.uniform(-0.2, 1.0))
        for kind in ("resid_pre", "attn_out")  # an attention-only model: no mlp_out
        for layer in range(4)
        for pos, name in enumerate(POSITIONS)
    ]
    rows += [
        (MODEL, kind, layer, head, -1, "", rng.uniform(-0.2, 1.0))
        for kind in ("z", "path_logits")
        for layer in range(4)
        for head in range(3)
    ]
    return pd.DataFrame(
        rows, columns=["model", "kind", "layer", "head", "pos", "position", "value"]
    )


def knockouts():
    rows = [
        (MODEL, "name mover", 1, 0.8, 0.4),
        (MODEL, "none", 0, 2.0, 1.0),
        (MODEL, "S-inhibition", 1, 1.0, 0.5),
    ]
    return pd.DataFrame(rows, columns=["model", "ablated", "n_heads", "logit_diff", "fraction"])


def faithfulness():
    return pd.DataFrame(
        [(MODEL, 9, 2.0, 1.8, 0.9, 0.2, 0.05, 50)],
        columns=["model", "circuit_size", "model_logit_diff", "circuit_logit_diff",
                 "faithfulness", "random_faithfulness", "random_faithfulness_sd",
                 "random_circuits"],
    )  # fmt: skip


TABLES = {  # figure -> {table name: its test table}
    "dla": {"head_classes": head_classes},
    "patching": {"patching": patching},
    "name_mover_attention": {"head_classes": head_classes},
    "circuit": {"head_classes": head_classes},
    "faithfulness": {"faithfulness": faithfulness, "knockouts": knockouts},
}


plot = partial(figure_helpers.plot, "ioi")
draw = partial(figure_helpers.draw, FIGURES)


def test_classes_match_the_classifier():
    from mechflow.experiments.ioi.measures import CLASSES as MEASURED

    assert tuple(CLASS_STYLE) == MEASURED


@pytest.mark.parametrize("figure", TABLES)
def test_each_figure_writes_png_and_svg_titled_with_the_model(figure, tmp_path):
    assert set(FIGURES[figure].tables) == set(TABLES[figure])
    assert FIGURES[figure].options == {"model": str}
    out = tmp_path / "figs" / f"{figure}.png"
    plot(figure, written(tmp_path, TABLES[figure]), out, "--option", "model=GPT-2 small")
    assert out.read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in out.with_suffix(".svg").read_bytes()[:1000]
    assert any(text.startswith("GPT-2 small: ") for text in svg_texts(out))


@pytest.mark.parametrize(
    ("figure", "table", "column"),
    [
        ("dla", "head_classes", "dla_s"),
        ("patching", "patching", "position"),
        ("name_mover_attention", "head_classes", "att_end_s2"),
        ("circuit", "head_classes", "class"),
        ("faithfulness", "faithfulness", "random_faithfulness_sd"),
        ("faithfulness", "knockouts", "fraction"),
    ],
)
def test_a_missing_column_names_table_and_column(figure, table, column, tmp_path):
    tables = dict(TABLES[figure])
    tables[table] = tables[table]().drop(columns=[column])
    out = tmp_path / "f.png"
    with pytest.raises(ValueError, match=rf"{table}\.csv: missing column\(s\) '{column}'"):
        plot(figure, written(tmp_path, tables), out)
    assert not out.exists() and not out.with_suffix(".svg").exists()


def test_an_unknown_class_is_refused(tmp_path):
    df = head_classes()
    df.loc[0, "class"] = "mover"
    with pytest.raises(ValueError, match=r"head_classes\.csv: column 'class' has \['mover'\]"):
        plot("dla", written(tmp_path, {"head_classes": df}), tmp_path / "f.png")


def test_dla_outlines_exactly_the_classified_heads(tmp_path):
    fig = draw("dla", written(tmp_path, TABLES["dla"]))
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["logit(IO)", "logit(S)", "logit(IO) − logit(S)"]
    for ax in panels:
        outlined = {
            (round(p.get_y() + 0.5), round(p.get_x() + 0.5))
            for p in ax.patches
            if isinstance(p, Rectangle) and not p.get_fill()
        }
        assert outlined == set(CLASSES)
        norm = ax.images[0].norm
        assert norm.vmin == -norm.vmax  # centred at 0


def test_patching_draws_the_kinds_present(tmp_path):
    fig = draw("patching", written(tmp_path, TABLES["patching"]))
    panels = {ax.get_title(): ax for ax in fig.axes if ax.images}
    from mechflow.experiments.ioi.figures import HEAD_KINDS, POSITION_KINDS

    titles = [POSITION_KINDS["resid_pre"], POSITION_KINDS["attn_out"], *HEAD_KINDS.values()]
    assert sorted(panels) == sorted(titles)  # no MLP panel: the table has none
    resid = panels[POSITION_KINDS["resid_pre"]]
    assert [t.get_text() for t in resid.get_xticklabels()] == list(POSITIONS)
    assert resid.images[0].get_array().shape == (4, len(POSITIONS))
    assert panels[HEAD_KINDS["path_logits"]].images[0].get_array().shape == (4, 3)
    norm = resid.images[0].norm
    assert (norm.vmin, norm.vmax) == (-1.0, 1.0)


def test_patching_refuses_an_unknown_kind(tmp_path):
    df = patching()
    df.loc[0, "kind"] = "resid_mid"
    with pytest.raises(ValueError, match=r"column 'kind' has \['resid_mid'\]"):
        plot("patching", written(tmp_path, {"patching": df}), tmp_path / "f.png")


def test_name_mover_attention_labels_the_classified_heads(tmp_path):
    fig = draw("name_mover_attention", written(tmp_path, TABLES["name_mover_attention"]))
    scatter_ax, bar_ax = fig.axes
    labels = {t.get_text() for t in scatter_ax.texts}
    assert labels == {f"{layer}.{head}" for layer, head in CLASSES}
    # the END readers, in class order: NM, NNM, SS, BNM, SI
    ticks = [t.get_text() for t in bar_ax.get_xticklabels()]
    assert ticks == ["3.0\nNM", "3.1\nNNM", "2.1\nSS", "3.2\nBNM", "2.0\nSI"]
    assert len(bar_ax.patches) == 3 * len(ticks)  # END -> IO, S1, S2


def test_name_mover_attention_without_classes_says_so(tmp_path):
    out = tmp_path / "f.png"
    plot("name_mover_attention", written(tmp_path, {"head_classes": head_classes({})}), out)
    assert "no END-reading head classified" in svg_texts(out)


def _gids(fig, kind):
    return {
        artist.get_gid()
        for ax in fig.axes
        for artist in [*ax.texts, *ax.patches]
        if isinstance(artist, kind) and (artist.get_gid() or "").startswith(("node-", "edge-"))
    }


def test_circuit_has_a_node_per_classified_head_and_the_paper_edges(tmp_path):
    from matplotlib.text import Text

    fig = draw("circuit", written(tmp_path, TABLES["circuit"]))
    nodes = _gids(fig, Text)
    assert nodes == {f"node-{layer}.{head}" for layer, head in CLASSES} | {"node-logits"}
    assert not {f"node-{label}" for label in UNCLASSIFIED} & nodes
    assert _gids(fig, FancyArrowPatch) == {
        "edge-0.1-2.0", "edge-0.1-2.1", "edge-1.0-2.0", "edge-1.0-2.1",  # DT, IND -> SI, SS
        "edge-0.0-1.0",  # PT -> IND
        "edge-2.0-3.0", "edge-2.0-3.2",  # SI -> NM, BNM
        "edge-3.0-logits", "edge-3.1-logits", "edge-3.2-logits", "edge-2.1-logits",
        "edge-2.2-logits",  # NM, NNM, BNM, SS, other -> logits
    }  # fmt: skip
    widths = {
        p.get_gid(): p.get_linewidth()
        for ax in fig.axes
        for p in ax.patches
        if isinstance(p, FancyArrowPatch)
    }
    # to_logits of 3.2 is 0.4, the largest edge value; 2.1's is 0.25
    assert widths["edge-3.2-logits"] == pytest.approx(4.0)
    assert widths["edge-2.1-logits"] == pytest.approx(4.0 * 0.25 / 0.4)


def test_circuit_without_classes_is_a_placeholder(tmp_path):
    out = tmp_path / "f.png"
    plot("circuit", written(tmp_path, {"head_classes": head_classes({})}), out)
    assert "no head classified: no circuit to draw" in svg_texts(out)


def test_faithfulness_bars_and_knockouts_in_order(tmp_path):
    paths = written(tmp_path, TABLES["faithfulness"])
    fig = draw("faithfulness", paths)
    bar_ax, knock_ax = fig.axes
    assert [round(p.get_height(), 6) for p in bar_ax.patches] == [1.0, 0.9, 0.2]
    ticks = [t.get_text() for t in knock_ax.get_xticklabels()]
    assert ticks == ["none (clean)", "name mover\n(1 head)", "S-inhibition\n(1 head)"]
    assert [p.get_height() for p in knock_ax.patches] == [1.0, 0.4, 0.5]
    out = tmp_path / "f.png"
    plot("faithfulness", paths, out)
    assert f"{MODEL}: faithfulness of the 9-head circuit" in svg_texts(out)
