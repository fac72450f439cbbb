"""Figures are drawn from the table alone: check panels, the plotted numbers, marks and errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mechflow.experiments.induction import figures as ind
from mechflow.plots.style import save_figure

N_LAYERS, N_HEADS = 2, 4
MODEL = "toy-2l"


def head_scores_table(scores=ind.HEAD_SCORE_ORDER) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        (MODEL, layer, head, score, rng.uniform(0, 0.3))
        for score, layer, head in itertools.product(scores, range(N_LAYERS), range(N_HEADS))
    ]
    df = pd.DataFrame(rows, columns=list(ind.HEAD_SCORE_COLUMNS))
    df.loc[(df.score == "induction") & (df.layer == 1) & (df["head"] == 2), "value"] = 0.8
    df.loc[(df.score == "previous_token") & (df.layer == 0) & (df["head"] == 1), "value"] = 0.45
    return df


def loss_table(half_len: int = 8) -> pd.DataFrame:
    first = [(MODEL, p, "first", 3.0) for p in range(1, half_len + 1)]
    second = [(MODEL, p, "second", 0.5) for p in range(half_len + 1, 2 * half_len + 1)]
    return pd.DataFrame(first + second, columns=list(ind.LOSS_BY_POSITION_COLUMNS))


def ablation_table() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for kind, layer, head in itertools.product(("zero", "mean"), range(N_LAYERS), range(N_HEADS)):
        delta = rng.normal(0, 0.1)
        rows.append((MODEL, layer, head, kind, 2.0 + delta, 2.0, delta))
    df = pd.DataFrame(rows, columns=list(ind.HEAD_ABLATION_COLUMNS))
    df.loc[(df.layer == 1) & (df["head"] == 0), ["loss", "delta"]] = [3.5, 1.5]
    return df


def phase_table(steps=range(0, 1000, 100), jump_at: int = 500) -> pd.DataFrame:
    rows = []
    for step in steps:
        formed = step >= jump_at
        rows += [
            (MODEL, step, "induction_score", 0.7 if formed else 0.05),
            (MODEL, step, "previous_token_score", 0.5 if formed else 0.1),
            (MODEL, step, "first_half_loss", 4.0),
            (MODEL, step, "repeated_half_loss", 1.0 if formed else 4.0),
            (MODEL, step, "icl_score", -2.0 if formed else -0.1),
        ]
    return pd.DataFrame(rows, columns=list(ind.PHASE_CHANGE_COLUMNS))


def composition_table(n_layers: int = N_LAYERS) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows = []
    for kind in ind.COMPOSITION_ORDER:
        for lf, lt in itertools.combinations(range(n_layers), 2):
            for hf, ht in itertools.product(range(N_HEADS), range(N_HEADS)):
                rows.append((MODEL, kind, lf, hf, lt, ht, rng.uniform(0.05, 0.3), 0.1))
    return pd.DataFrame(rows, columns=list(ind.COMPOSITION_COLUMNS))


def copying_table() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for layer, head in itertools.product(range(N_LAYERS), range(N_HEADS)):
        ratio = rng.uniform(-1, 1)
        rows += [
            (MODEL, layer, head, "eigen_ratio", ratio),
            (MODEL, layer, head, "positive_fraction", (ratio + 1) / 2),
        ]
    return pd.DataFrame(rows, columns=list(ind.COPYING_COLUMNS))


def panels(fig: Figure) -> list:
    """Axes that carry a panel title (colorbars and blank filler axes have none)."""
    return [ax for ax in fig.axes if ax.get_title() or ax.get_title(loc="left")]


def boxes(ax) -> int:
    return sum(isinstance(p, Rectangle) and p.get_fill() is False for p in ax.patches)


def test_head_scores_panels_values_and_threshold_boxes():
    df = head_scores_table()
    fig = ind.head_scores_figure(df)
    assert isinstance(fig, Figure)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == [
        "previous-token score",
        "duplicate-token score",
        "induction score",
    ]
    assert MODEL in fig.get_suptitle()
    induction = df[df.score == "induction"].pivot(index="layer", columns="head", values="value")
    np.testing.assert_allclose(axes[2].images[0].get_array(), induction.to_numpy())
    assert [boxes(ax) for ax in axes] == [1, 0, 1]
    # a lower threshold boxes more heads: the marks follow the flag, not a constant
    low = panels(ind.head_scores_figure(df, threshold=0.0))
    assert [boxes(ax) for ax in low] == [N_LAYERS * N_HEADS] * 3
    assert boxes(panels(ind.head_scores_figure(df, threshold=0.5))[0]) == 0


def test_head_scores_missing_head_is_blank_not_shifted():
    df = head_scores_table(("induction",))
    df = df[~((df.layer == 0) & (df["head"] == 3))]
    image = panels(ind.head_scores_figure(df))[0].images[0].get_array()
    assert image.shape == (N_LAYERS, N_HEADS)
    assert np.ma.is_masked(image[0, 3]) or np.isnan(image[0, 3])
    assert image[1, 2] == pytest.approx(0.8)


def test_loss_by_position_lines_and_uniform_reference():
    fig = ind.loss_by_position_figure(loss_table())
    (ax,) = fig.axes
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 3.0)
    np.testing.assert_allclose(ax.lines[1].get_xdata(), range(9, 17))
    assert len({line.get_color() for line in ax.lines}) == 2
    (ax,) = ind.loss_by_position_figure(loss_table(), d_vocab=20).axes
    assert len(ax.lines) == 3
    assert ax.lines[2].get_ydata()[0] == pytest.approx(math.log(20))
    assert MODEL in ax.get_title()


def test_loss_by_position_rejects_unknown_half():
    df = loss_table()
    df.loc[0, "half"] = "third"
    with pytest.raises(ValueError, match="third"):
        ind.loss_by_position_figure(df)


def test_head_ablation_diverging_scale_centred_at_zero():
    df = ablation_table()
    fig = ind.head_ablation_figure(df)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["zero-ablation", "mean-ablation"]
    assert "clean loss 2.000" in fig.get_suptitle()
    for ax in axes:
        norm = ax.images[0].norm
        assert norm.vmin == pytest.approx(-norm.vmax)
        assert norm.vmax == pytest.approx(df.delta.abs().max())
    zero = df[df.ablation == "zero"].pivot(index="layer", columns="head", values="delta")
    np.testing.assert_allclose(axes[0].images[0].get_array(), zero.to_numpy())


def test_phase_change_step():
    assert ind.phase_change_step(phase_table(jump_at=500)) == 500
    assert ind.phase_change_step(phase_table(jump_at=500), threshold=0.9) is None
    # rows out of order: the first step in training order wins
    assert ind.phase_change_step(phase_table(jump_at=300).sample(frac=1, random_state=0)) == 300


def test_phase_change_panels_share_x_and_mark_the_step():
    fig = ind.phase_change_figure(phase_table(jump_at=500))
    axes = panels(fig)
    assert len(axes) == 3
    assert axes[0].get_shared_x_axes().joined(axes[0], axes[2])
    assert "500" in fig.get_suptitle()
    for ax in axes:
        assert any(np.all(np.asarray(line.get_xdata()) == 500) for line in ax.lines)
    assert [len(ax.get_legend().get_texts()) for ax in axes] == [4, 2, 1]
    never = ind.phase_change_figure(phase_table(jump_at=10_000))
    assert "never" in never.get_suptitle()


def test_phase_change_missing_metric_gives_a_note_not_a_crash():
    df = phase_table()
    fig = ind.phase_change_figure(df[df.metric != "icl_score"])
    assert "no icl_score in table" in [t.get_text() for t in panels(fig)[2].texts]


def test_composition_panels_labels_and_baseline():
    df = composition_table()
    fig = ind.composition_figure(df)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == [
        f"{k}-composition (baseline 0.100)" for k in ind.COMPOSITION_ORDER
    ]
    k = axes[1]
    assert [t.get_text() for t in k.get_yticklabels()] == ["0.0", "0.1", "0.2", "0.3"]
    assert [t.get_text() for t in k.get_xticklabels()] == ["1.0", "1.1", "1.2", "1.3"]
    expected = df[df.kind == "K"].pivot(index="head_from", columns="head_to", values="score")
    np.testing.assert_allclose(k.images[0].get_array(), expected.to_numpy())


def test_composition_three_layers_uses_layer_head_labels():
    axes = panels(ind.composition_figure(composition_table(n_layers=3)))
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert labels == [f"{layer}.{h}" for layer in (0, 1) for h in range(N_HEADS)]
    image = axes[0].images[0].get_array()
    assert image.shape == (2 * N_HEADS, 2 * N_HEADS)
    assert np.ma.count_masked(image) + np.isnan(image.filled(0)).sum() == N_HEADS * N_HEADS


def test_composition_empty_table_says_why():
    fig = ind.composition_figure(composition_table().iloc[:0])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("≥ 2 layers" in t for t in texts)


def test_composition_rejects_backwards_pairs():
    df = composition_table()
    df.loc[0, "layer_from"] = 1
    with pytest.raises(ValueError, match="layer_from < layer_to"):
        ind.composition_figure(df, source="comp.csv")


def test_copying_eigen_ratio_scale():
    fig = ind.copying_figure(copying_table())
    axes = panels(fig)
    assert len(axes) == 2
    norm = axes[0].images[0].norm
    assert (norm.vmin, norm.vmax) == (-1.0, 1.0)
    only_ratio = copying_table().query("score == 'eigen_ratio'")
    assert len(panels(ind.copying_figure(only_ratio))) == 1


FIGURES = [
    (ind.head_scores_figure, head_scores_table),
    (ind.loss_by_position_figure, loss_table),
    (ind.head_ablation_figure, ablation_table),
    (ind.phase_change_figure, phase_table),
    (ind.composition_figure, composition_table),
    (ind.copying_figure, copying_table),
]


@pytest.mark.parametrize(("figure", "table"), FIGURES, ids=lambda f: f.__name__)
def test_missing_column_names_source_and_column(figure, table):
    df = table().drop(columns=["model"])
    with pytest.raises(ValueError, match=r"bad\.csv.*'model'"):
        figure(df, source="bad.csv")


@pytest.mark.parametrize(("figure", "table"), FIGURES, ids=lambda f: f.__name__)
def test_duplicate_rows_are_not_averaged(figure, table):
    df = table()
    with pytest.raises(ValueError, match="more than one row"):
        figure(pd.concat([df, df.iloc[:1]]), source="dup.csv")


@pytest.mark.parametrize(("figure", "table"), FIGURES, ids=lambda f: f.__name__)
def test_one_model_per_table(figure, table):
    df = table()
    df.loc[df.index[-1], "model"] = "other"
    with pytest.raises(ValueError, match="exactly one model"):
        figure(df)


@pytest.mark.parametrize(("figure", "table"), FIGURES, ids=lambda f: f.__name__)
def test_custom_title_replaces_default(figure, table):
    fig = figure(table(), title="My title")
    titles = [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("My title") for t in titles)


def test_non_numeric_value_column():
    df = head_scores_table().astype({"value": str})
    df.loc[0, "value"] = "n/a"
    with pytest.raises(ValueError, match="'value' must be numeric"):
        ind.head_scores_figure(df, source="x.csv")


def test_save_figure_writes_png_and_svg_deterministically(tmp_path):
    out = tmp_path / "fig" / "scores.png"
    png, svg = save_figure(ind.head_scores_figure(head_scores_table()), out)
    assert (png, svg) == (out, out.with_suffix(".svg"))
    first = png.read_bytes(), svg.read_bytes()
    assert first[0].startswith(b"\x89PNG") and b"<svg" in first[1]
    assert b"Software" not in first[0] and b"<dc:date>" not in first[1]
    save_figure(ind.head_scores_figure(head_scores_table()), out)
    assert (png.read_bytes(), svg.read_bytes()) == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.png", "scores.svg"]


def test_save_figure_leaves_nothing_when_drawing_fails(tmp_path):
    fig = ind.head_scores_figure(head_scores_table())
    original = fig.savefig

    def fail_on_png(path, **kwargs):
        if kwargs.get("format") == "png":
            raise RuntimeError("disk full")
        original(path, **kwargs)

    fig.savefig = fail_on_png
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == []


def test_save_figure_wants_png(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        save_figure(ind.head_scores_figure(head_scores_table()), tmp_path / "f.pdf")


# --- every figure's title names what it shows ---------------------------------------------------
# Each registered figure drawn from tiny tables whose model (run, toy model) is NAME; names a
# table does not carry (the SAE's model, hook and SAE) come as the options its rule passes.
NAME, HOOK, SAE = "foo", "hook_bar", "sae_baz"


def _grokking_tables() -> dict[str, pd.DataFrame]:
    from mechflow.experiments.grokking import figures as grok

    epochs = range(0, 101, 10)
    log = pd.DataFrame(
        [(e, 1.0 / (e + 1), min(1.0, e / 50), 2.0 / (e + 1), e / 100) for e in epochs],
        columns=grok.LOG_COLUMNS,
    )
    phases = pd.DataFrame(
        [(NAME, "memorisation", 0.0, 50.0), (NAME, "circuit formation", 50.0, 80.0),
         (NAME, "cleanup", 80.0, 100.0)],
        columns=["model", *grok.PHASE_COLUMNS],
    )  # fmt: skip
    progress = pd.DataFrame(
        [(NAME, e, m, 1.0 / (e + 1)) for e in epochs
         for m in ("train_loss", "test_loss", "restricted_loss", "excluded_loss", "weight_norm")],
        columns=grok.PROGRESS_COLUMNS,
    )  # fmt: skip
    embedding = pd.DataFrame(
        [(NAME, 0, "const", 0.1, 0.0)]
        + [(NAME, k, c, 1.0 if k == 2 else 0.1, 0.2) for k in range(1, 4) for c in ("cos", "sin")],
        columns=grok.EMBEDDING_COLUMNS,
    )
    maps = pd.DataFrame(
        [(NAME, "head", 0, 1, a, b, float(a + b)) for a in range(5) for b in range(5)],
        columns=grok.MAP_COLUMNS,
    )
    keys = pd.DataFrame({"frequency": [2], "embedding_share": [0.8]})
    return {"log": log, "phases": phases, "progress": progress, "embedding": embedding,
            "maps": maps, "keys": keys}  # fmt: skip


def _superposition_tables() -> dict[str, pd.DataFrame]:
    from mechflow.experiments.superposition import figures as sup

    n, probs = 3, (1.0, 0.1)
    wtw = pd.DataFrame(
        [
            (NAME, inst, i, j, float(i == j))
            for inst in range(2)
            for i in range(n)
            for j in range(n)
        ],
        columns=list(sup.WTW_COLUMNS),
    )
    features = pd.DataFrame(
        [(NAME, inst, p, f, 0.0, 1.0, 0.1, 1.0, True) for inst, p in enumerate(probs)
         for f in range(n)],
        columns=list(sup.FEATURE_COLUMNS),
    )  # fmt: skip
    instances = pd.DataFrame(
        [(NAME, inst, p, 0.6) for inst, p in enumerate(probs)], columns=list(sup.INSTANCE_COLUMNS)
    )
    phases = pd.DataFrame(
        [(p, r, "superposition") for p in (1.0, 0.1) for r in (0.5, 2.0)],
        columns=list(sup.PHASE_COLUMNS),
    )
    return {"wtw": wtw, "features": features, "instances": instances, "phases": phases}


def _sae_tables() -> dict[str, pd.DataFrame]:
    metrics = pd.DataFrame(
        [(f"topk_{k}", HOOK, "topk", m, v) for k in (4, 8)
         for m, v in (("l0", float(k)), ("ce_recovered_zero", 0.9), ("fvu", 0.1))],
        columns=["sae", "hook", "architecture", "metric", "value"],
    )  # fmt: skip
    contexts = pd.DataFrame({"latent": [3], "rank": [0], "activation": [1.5], "context": ["1 [2]"]})
    histograms = pd.DataFrame(
        {"latent": [3], "bin_left": [0.0], "bin_right": [1.0], "count": [4], "frequency": [0.1]}
    )
    logits = pd.DataFrame(
        {"latent": [3, 3], "sign": ["positive", "negative"], "rank": [0, 0], "token": [5, 6],
         "value": [0.5, -0.5]}
    )  # fmt: skip
    recovery = pd.DataFrame(
        {"sae": SAE, "feature": range(3), "importance": [1.0, 0.7, 0.5], "norm": [1.0, 1.0, 0.0],
         "represented": [True, True, False], "max_cosine": [0.99, 0.95, 0.2],
         "best_latent": [0, 1, 2], "recovered": [True, True, False]}
    )  # fmt: skip
    return {"metrics": metrics, "contexts": contexts, "histograms": histograms,
            "logits": logits, "recovery": recovery}  # fmt: skip


def _named(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(model=NAME)


def title_cases() -> dict[str, tuple[tuple[pd.DataFrame, ...], dict, tuple[str, ...]]]:
    """``<experiment>.<figure>`` -> (its tables, its options, the names its title must hold)."""
    g, s, a = _grokking_tables(), _superposition_tables(), _sae_tables()
    return {
        "induction.head_scores": ((_named(head_scores_table()),), {}, (NAME,)),
        "induction.loss_by_position": ((_named(loss_table()),), {}, (NAME,)),
        "induction.head_ablation": ((_named(ablation_table()),), {}, (NAME,)),
        "induction.composition": ((_named(composition_table()),), {}, (NAME,)),
        "induction.copying": ((_named(copying_table()),), {}, (NAME,)),
        "induction.phase_change": ((_named(phase_table()),), {}, (NAME,)),
        "grokking.grokking_curves": ((g["log"], g["phases"]), {}, (NAME,)),
        "grokking.embedding_fourier": ((g["embedding"], g["keys"]), {}, (NAME,)),
        "grokking.activation_maps": ((g["maps"],), {}, (NAME,)),
        "grokking.progress_measures": ((g["progress"], g["phases"]), {}, (NAME,)),
        "superposition.superposition": ((s["wtw"], s["features"]), {}, (NAME,)),
        "superposition.dimensionality": ((s["features"], s["instances"]), {}, (NAME,)),
        # one map per config, of the n = 2, m = 1 model: that is its name
        "superposition.superposition_phases": ((s["phases"],), {}, ("n = 2, m = 1",)),
        "saes.sae_frontier": ((a["metrics"],), {"model": NAME}, (NAME, HOOK)),
        "saes.latent_dashboard": (
            (a["contexts"], a["histograms"], a["logits"]),
            {"model": NAME, "hook": HOOK, "sae": SAE},
            (NAME, HOOK, SAE),
        ),
        "saes.toy_recovery": ((a["recovery"],), {"model": NAME}, (NAME, SAE)),
    }


def _registered() -> dict:
    import importlib

    return {
        f"{experiment}.{name}": kind
        for experiment in ("induction", "grokking", "superposition", "saes")
        for name, kind in importlib.import_module(
            f"mechflow.experiments.{experiment}.figures"
        ).FIGURES.items()
    }


def test_every_registered_figure_has_a_title_case():
    assert sorted(title_cases()) == sorted(_registered())


@pytest.mark.parametrize("figure", sorted(title_cases()))
def test_every_figure_title_names_what_it_shows(figure):
    tables, options, names = title_cases()[figure]
    kind = _registered()[figure]
    assert set(options) <= set(kind.options)  # names a table lacks are options the rule passes
    fig = kind.draw(*tables, **options)
    # the figure's title: its suptitle, or the title of a single-panel figure
    title = fig.get_suptitle() or (fig.axes[0].get_title() if len(fig.axes) == 1 else "")
    for name in names:
        assert name in title, f"{figure}: {name!r} not in its title {title!r}"
