"""The IOI figures (Wang et al. 2022, "Interpretability in the Wild"), drawn from tidy tables.

- ``dla_figure``: each head's direct logit attribution at END to logit(IO), logit(S) and IO−S,
  classified heads outlined, since the classes are read off these numbers.
- ``patching_figure``: activation and path patching, one panel per kind the table holds.
- ``name_mover_attention_figure``: the paper's Figure 3, attention to IO against its effect
  on logit(IO), and where the END-reading heads look.
- ``circuit_figure``: the classified heads as a diagram, edges as wide as their path effects.
- ``faithfulness_figure``: the circuit against the model and random circuits, and the
  knock-out of each class.

Every function checks its tables' schema before drawing and returns a ``Figure``. This module
imports no torch: figures never touch a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

from mechflow.plots.style import (
    FigureKind,
    annotate_cells,
    check_table,
    figure_style,
    grid,
    model_name,
    new_figure,
    placeholder_figure,
    titled,
)

# class -> (colour, short tag), in the order of ``measures.CLASSES`` (a test keeps them equal)
CLASS_STYLE = {
    "name mover": ("tab:blue", "NM"),
    "negative name mover": ("tab:red", "NNM"),
    "S suppression": ("tab:orange", "SS"),
    "backup name mover": ("tab:cyan", "BNM"),
    "S-inhibition": ("tab:purple", "SI"),
    "duplicate-token": ("tab:green", "DT"),
    "induction": ("tab:olive", "IND"),
    "previous-token": ("tab:pink", "PT"),
    "other": ("tab:brown", "O"),
}
UNCLASSIFIED = "#b0b0b0"
END_READERS = (
    "name mover",
    "negative name mover",
    "S suppression",
    "backup name mover",
    "S-inhibition",
)

DLA_PANELS = (("dla_io", "logit(IO)"), ("dla_s", "logit(S)"), ("dla_diff", "logit(IO) − logit(S)"))
HEAD_COLUMNS = (
    "model", "layer", "head", "class", "dla_io", "dla_s", "dla_diff", "att_end_io", "att_end_s1",
    "att_end_s2", "att_s1p1_s1", "att_s2_s1", "att_s2_s1p1", "dla_io_movers_ablated",
    "via_movers_q", "via_inhibitors_qkv", "via_induction_k", "to_logits",
)  # fmt: skip
PATCHING_COLUMNS = ("model", "kind", "layer", "head", "pos", "position", "value")
KNOCKOUT_COLUMNS = ("model", "ablated", "n_heads", "logit_diff", "fraction")
FAITHFULNESS_COLUMNS = (
    "model", "circuit_size", "model_logit_diff", "circuit_logit_diff", "faithfulness",
    "random_faithfulness", "random_faithfulness_sd", "random_circuits",
)  # fmt: skip

# patching kind -> panel title; the first three are layer x position, the rest layer x head
POSITION_KINDS = {
    "resid_pre": "residual stream (resid_pre)",
    "attn_out": "attention outputs (attn_out)",
    "mlp_out": "MLP outputs (mlp_out)",
}
HEAD_KINDS = {
    "z": "head outputs, all positions (z): clean into ABC",
    "path_logits": "head → logits path: ABC into clean",
}

# sender classes -> receiver classes, and the sender's column its edge width is read from
EDGES = (
    (("duplicate-token", "induction"), ("S-inhibition", "S suppression"), "via_inhibitors_qkv"),
    (("previous-token",), ("induction",), "via_induction_k"),
    (("S-inhibition",), ("name mover", "backup name mover"), "via_movers_q"),
    (("name mover", "negative name mover", "backup name mover", "S suppression", "other"),
     ("logits",), "to_logits"),
)  # fmt: skip

_DIVERGING = matplotlib.colormaps["RdBu"].with_extremes(bad="#e0e0e0")
TAG_BOX = {"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.8}
ARROW = {"arrowstyle": "-|>", "mutation_scale": 8, "shrinkA": 13, "shrinkB": 13, "color": "0.35",
         "alpha": 0.8, "connectionstyle": "arc3,rad=0.06", "zorder": 1}  # fmt: skip


def _prepare(df: pd.DataFrame, columns: Sequence[str], text: Sequence[str], source: str) -> str:
    """Schema checks before any drawing (every column not in ``text`` is numeric); the model."""
    check_table(df, columns, [c for c in columns if c not in text], source)
    return model_name(df, source)


def _head_classes(df: pd.DataFrame, source: str) -> tuple[str, pd.DataFrame]:
    """The table plus ``cls``, its class as text ("" for none; ``class`` is a keyword, so no
    attribute of a row), and ``label``, "L.H"; one row per head."""
    model = _prepare(df, HEAD_COLUMNS, ("model", "class"), source)
    if df.duplicated(["layer", "head"]).any():
        raise ValueError(f"{source}: more than one row for a (layer, head)")
    classes = df["class"].astype(object).fillna("").astype(str)
    unknown = sorted(set(classes) - set(CLASS_STYLE) - {""})
    if unknown:
        raise ValueError(f"{source}: column 'class' has {unknown}; expected {list(CLASS_STYLE)}")
    labels = [
        f"{int(layer)}.{int(head)}" for layer, head in zip(df["layer"], df["head"], strict=True)
    ]
    return model, df.assign(cls=classes, label=labels)


def _class_legend(classes) -> list[Patch]:
    present = set(classes)
    return [
        Patch(facecolor=color, label=f"{tag}: {name}")
        for name, (color, tag) in CLASS_STYLE.items()
        if name in present
    ]


def _heatmap(
    ax: Axes, matrix: pd.DataFrame, norm: Normalize, xlabels, title: str, xlabel: str
) -> AxesImage:
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, cmap=_DIVERGING, norm=norm, aspect="auto")
    ax.set_xticks(range(values.shape[1]), xlabels, rotation=90 if xlabel == "position" else 0)
    ax.set_yticks(range(values.shape[0]), [str(r) for r in matrix.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_title(title)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    annotate_cells(ax, values, _DIVERGING, norm)
    return image


def dla_figure(
    df: pd.DataFrame,
    source: str = "head_classes",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """Direct logit attribution to IO, S and their difference: one scale, as all are logits."""
    table_model, df = _head_classes(df, source)
    layers, heads = range(int(df["layer"].max()) + 1), range(int(df["head"].max()) + 1)
    bound = float(np.nanmax(np.abs(df[[c for c, _ in DLA_PANELS]].to_numpy()))) or 1.0
    norm = Normalize(-bound, bound)
    classified = df[df["cls"] != ""]
    with figure_style():
        fig = new_figure(max(9.0, 0.42 * len(heads) * 3 + 2.5), max(3.4, 0.35 * len(layers) + 1.8))
        axes = fig.subplots(1, 3)
        for ax, (column, what) in zip(axes, DLA_PANELS, strict=True):
            matrix = grid(df, "layer", "head", column, source, layers, heads)
            image = _heatmap(ax, matrix, norm, [str(h) for h in heads], what, "head")
            for row in classified.itertuples():  # outlined in the class colour, tag in a corner
                color, tag = CLASS_STYLE[row.cls]
                corner = (row.head - 0.5, row.layer - 0.5)
                ax.add_patch(Rectangle(corner, 1, 1, fill=False, edgecolor=color, linewidth=1.8))
                ax.text(row.head - 0.46, row.layer - 0.44, tag, ha="left", va="top",
                        fontsize=4.5, bbox=TAG_BOX)  # fmt: skip
        fig.colorbar(image, ax=axes, shrink=0.9, label="direct logit attribution at END")
        if len(classified):
            handles = _class_legend(classified["cls"])
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5))
        fig.suptitle(title or titled("direct logit attribution of each head", model or table_model))
    return fig


def patching_figure(
    df: pd.DataFrame,
    source: str = "patching",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """Layer x position panels for the residual stream and block outputs, layer x head panels
    for heads; colours symmetric about 0 (as in the paper) so a harmful patch shows red."""
    table_model = _prepare(df, PATCHING_COLUMNS, ("model", "kind", "position"), source)
    kinds = set(df["kind"].astype(str))
    unknown = sorted(kinds - set(POSITION_KINDS) - set(HEAD_KINDS))
    if unknown:
        raise ValueError(
            f"{source}: column 'kind' has {unknown}; expected {[*POSITION_KINDS, *HEAD_KINDS]}"
        )
    rows_of_panels = [
        [k for k in kind_titles if k in kinds] for kind_titles in (POSITION_KINDS, HEAD_KINDS)
    ]
    rows_of_panels = [row for row in rows_of_panels if row]
    bound = max(1.0, float(np.nanmax(np.abs(df["value"].to_numpy(dtype=float)))))
    norm = Normalize(-bound, bound)
    layers = range(int(df["layer"].max()) + 1)
    n_cols = max(len(row) for row in rows_of_panels)
    with figure_style():
        fig = new_figure(max(4.5 * n_cols, 6.0), 3.4 * len(rows_of_panels) + 0.4)
        subfigs = np.atleast_1d(fig.subfigures(len(rows_of_panels), 1))
        for subfig, kinds_here in zip(subfigs, rows_of_panels, strict=True):
            axes = np.atleast_1d(subfig.subplots(1, len(kinds_here)))
            for ax, kind in zip(axes, kinds_here, strict=True):
                rows = df[df["kind"].astype(str) == kind]
                if kind in POSITION_KINDS:
                    names = rows.groupby("pos")["position"].first().fillna("").astype(str)
                    matrix = grid(rows, "layer", "pos", "value", source, layers, names.index)
                    image = _heatmap(
                        ax, matrix, norm, names.tolist(), POSITION_KINDS[kind], "position"
                    )
                else:
                    heads = range(int(rows["head"].max()) + 1)
                    matrix = grid(rows, "layer", "head", "value", source, layers, heads)
                    image = _heatmap(
                        ax, matrix, norm, [str(h) for h in heads], HEAD_KINDS[kind], "head"
                    )
            subfig.colorbar(image, ax=axes, shrink=0.9, label="normalised logit difference")
        fig.suptitle(
            title
            or titled(
                "patching (normalised logit difference: 1 = clean, 0 = ABC)", model or table_model
            )
        )
    return fig


def _end_readers(df: pd.DataFrame) -> pd.DataFrame:
    order = {name: i for i, name in enumerate(END_READERS)}
    readers = df[df["cls"].isin(order)]
    return readers.assign(rank=readers["cls"].map(order)).sort_values(["rank", "layer", "head"])


def name_mover_attention_figure(
    df: pd.DataFrame,
    source: str = "head_classes",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """Name movers copy what they attend to: attention END -> IO against the direct effect on
    logit(IO) separates them (Figure 3 of the paper); the bars show what END readers attend."""
    table_model, df = _head_classes(df, source)
    with figure_style():
        fig = new_figure(10.5, 4.2)
        scatter_ax, bar_ax = fig.subplots(1, 2)
        plain = df[df["cls"] == ""]
        scatter_ax.scatter(
            plain["att_end_io"], plain["dla_io"], s=14, color=UNCLASSIFIED, label="unclassified"
        )
        for name, (color, _) in CLASS_STYLE.items():
            heads = df[df["cls"] == name]
            if heads.empty:
                continue
            scatter_ax.scatter(heads["att_end_io"], heads["dla_io"], s=24, color=color, label=name)
            for row in heads.itertuples():
                scatter_ax.annotate(
                    row.label,
                    (row.att_end_io, row.dla_io),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        scatter_ax.axhline(0, color="black", lw=0.6)
        scatter_ax.set_xlabel("attention END → IO")
        scatter_ax.set_ylabel("direct logit attribution to logit(IO)")
        scatter_ax.set_title("every head", loc="left")
        scatter_ax.grid(alpha=0.3)
        scatter_ax.legend(fontsize=7, framealpha=0.6)
        readers = _end_readers(df)
        if readers.empty:
            bar_ax.set_axis_off()
            bar_ax.text(
                0.5,
                0.5,
                "no END-reading head classified",
                ha="center",
                va="center",
                transform=bar_ax.transAxes,
            )
        else:
            x = np.arange(len(readers))
            for offset, key in zip((-0.27, 0.0, 0.27), ("IO", "S1", "S2"), strict=True):
                column = f"att_end_{key.lower()}"
                bar_ax.bar(x + offset, readers[column], width=0.27, label=f"END → {key}")
            tags = readers["cls"].map(lambda c: CLASS_STYLE[c][1])
            bar_ax.set_xticks(x, readers["label"] + "\n" + tags)
            bar_ax.set_ylim(0, 1)
            bar_ax.set_xlabel("head (class)")
            bar_ax.set_ylabel("mean attention probability")
            bar_ax.set_title("where the END-reading heads attend", loc="left")
            bar_ax.grid(alpha=0.3, axis="y")
            bar_ax.legend(fontsize=7)
        fig.suptitle(
            title or titled("name movers: attention to IO and its effect", model or table_model)
        )
    return fig


def circuit_figure(
    df: pd.DataFrame,
    source: str = "head_classes",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """The classified heads by layer, an arrow from each sender class to the classes it was found
    through, as wide as the sender's path effect; only forward in layers, where a path can run."""
    table_model, df = _head_classes(df, source)
    title = title or titled("the IOI circuit", model or table_model)
    nodes = df[df["cls"] != ""].sort_values(["layer", "head"])
    if nodes.empty:
        return placeholder_figure("no head classified: no circuit to draw", title)
    n_layers = int(df["layer"].max()) + 1
    stack = nodes.groupby("layer").cumcount()
    height = nodes.groupby("layer")["head"].transform("size")
    nodes = nodes.assign(x=nodes["layer"].astype(float), y=stack - (height - 1) / 2)
    logits = {"layer": float(n_layers), "x": float(n_layers), "y": 0.0}
    edges = []  # (sender row, receiver position, value)
    for senders, receivers, column in EDGES:
        if receivers == ("logits",):
            targets = [logits]
        else:
            targets = nodes[nodes["cls"].isin(receivers)].to_dict("records")
        for sender in nodes[nodes["cls"].isin(senders)].to_dict("records"):
            edges += [(sender, t, sender[column]) for t in targets if t["layer"] > sender["layer"]]
    top = max([v for *_, v in edges if np.isfinite(v)], default=0.0) or 1.0
    with figure_style():
        fig = new_figure(max(6.0, 0.9 * (n_layers + 1) + 3.0), max(3.0, 0.6 * height.max() + 2.0))
        ax = fig.add_subplot()
        for sender, target, value in edges:
            width = max(0.3, 4.0 * (value if np.isfinite(value) else 0.0) / top)  # floor: visible
            gid = f"edge-{sender['label']}-{target.get('label', 'logits')}"
            start, end = (sender["x"], sender["y"]), (target["x"], target["y"])
            ax.add_patch(FancyArrowPatch(start, end, lw=width, gid=gid, **ARROW))
        for row in nodes.itertuples():  # the node is its label's box; gid "node-L.H" in the SVG
            color = CLASS_STYLE[row.cls][0]
            box = {"boxstyle": "round,pad=0.3", "fc": to_rgba(color, 0.35), "ec": color}
            ax.text(row.x, row.y, row.label, ha="center", va="center", fontsize=7, zorder=3,
                    gid=f"node-{row.label}", bbox=box)  # fmt: skip
        ax.text(logits["x"], logits["y"], "logits", ha="center", va="center", zorder=3,
                gid="node-logits", bbox={"boxstyle": "round,pad=0.4", "fc": "white"})  # fmt: skip
        ax.set_xlim(-0.7, n_layers + 0.7)
        ax.set_ylim(nodes["y"].min() - 0.8, nodes["y"].max() + 0.8)
        ax.set_xticks([*range(n_layers), n_layers], [*map(str, range(n_layers)), ""])
        ax.set_xlabel("layer")
        ax.set_yticks([])
        for side in ("left", "top", "right"):
            ax.spines[side].set_visible(False)
        fig.legend(handles=_class_legend(nodes["cls"]), loc="outside right upper", fontsize=7)
        ax.set_title(f"edge width ∝ path effect (widest {top:.2f})", loc="left", fontsize=8)
        fig.suptitle(title)
    return fig


def faithfulness_figure(
    faithfulness: pd.DataFrame,
    knockouts: pd.DataFrame,
    source: str = "faithfulness",
    knockouts_source: str = "knockouts",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """How much of the model's logit difference the circuit alone keeps, against random circuits
    of its size, and how much each class's knock-out takes away."""
    table_model = _prepare(faithfulness, FAITHFULNESS_COLUMNS, ("model",), source)
    if len(faithfulness) != 1:
        raise ValueError(f"{source}: expected one row, found {len(faithfulness)}")
    if _prepare(knockouts, KNOCKOUT_COLUMNS, ("model", "ablated"), knockouts_source) != table_model:
        raise ValueError(f"{knockouts_source}: not of the model of {source} ({table_model})")
    if knockouts["ablated"].duplicated().any():
        raise ValueError(f"{knockouts_source}: more than one row for an ablated class")
    row = faithfulness.iloc[0]
    size = int(row["circuit_size"])
    order = ["none", *CLASS_STYLE]
    knockouts = knockouts.assign(ablated=knockouts["ablated"].astype(str))
    knockouts = knockouts.assign(
        rank=[order.index(a) if a in order else len(order) for a in knockouts["ablated"]]
    ).sort_values(["rank", "ablated"])
    with figure_style():
        fig = new_figure(10.0, 4.0)
        bar_ax, knock_ax = fig.subplots(1, 2, width_ratios=[1.0, 1.6])
        labels = ["full model", f"circuit\n({size} heads)",
                  f"random circuits\n(mean ± sd of {int(row['random_circuits'])})"]  # fmt: skip
        values = [1.0, row["faithfulness"], row["random_faithfulness"]]
        bars = bar_ax.bar(labels, values, color=["0.6", "tab:blue", "tab:gray"])
        bar_ax.errorbar(2, values[2], yerr=row["random_faithfulness_sd"], fmt="none", color="black",
                        capsize=4)  # fmt: skip
        bar_ax.bar_label(bars, fmt="%.2f", padding=2)
        bar_ax.set_ylabel("logit difference / the model's")
        bar_ax.set_title(
            f"model {row['model_logit_diff']:.2f}, circuit {row['circuit_logit_diff']:.2f}",
            loc="left",
        )
        colors = [
            "0.6" if a == "none" else CLASS_STYLE.get(a, ("tab:gray",))[0]
            for a in knockouts["ablated"]
        ]
        ticks = [
            "none (clean)" if a == "none" else f"{a}\n({int(n)} head{'s' * (int(n) != 1)})"
            for a, n in zip(knockouts["ablated"], knockouts["n_heads"], strict=True)
        ]
        knocked = knock_ax.bar(range(len(knockouts)), knockouts["fraction"], color=colors)
        knock_ax.bar_label(knocked, fmt="%.2f", padding=2)
        crowded = len(knockouts) > 4
        knock_ax.set_xticks(range(len(knockouts)), ticks, rotation=30 if crowded else 0,
                            ha="right" if crowded else "center")  # fmt: skip
        knock_ax.set_ylabel("logit difference / clean")
        knock_ax.set_title("each class mean-ablated", loc="left")
        for ax in (bar_ax, knock_ax):
            ax.axhline(1.0, color="black", lw=0.6, ls="--")
            ax.axhline(0.0, color="black", lw=0.6)
            ax.grid(alpha=0.3, axis="y")
            ax.margins(y=0.12)  # room for the bar labels
        fig.suptitle(
            title or titled(f"faithfulness of the {size}-head circuit", model or table_model)
        )
    return fig


# The figures of this experiment, as the generic figure step draws them (plot_<name> rules).
FIGURES = {
    "dla": FigureKind(draw=dla_figure, tables={"head_classes": "source"}, options={"model": str}),
    "patching": FigureKind(
        draw=patching_figure, tables={"patching": "source"}, options={"model": str}
    ),
    "name_mover_attention": FigureKind(
        draw=name_mover_attention_figure, tables={"head_classes": "source"}, options={"model": str}
    ),
    "circuit": FigureKind(
        draw=circuit_figure, tables={"head_classes": "source"}, options={"model": str}
    ),
    "faithfulness": FigureKind(
        draw=faithfulness_figure,
        tables={"faithfulness": "source", "knockouts": "knockouts_source"},
        options={"model": str},
    ),
}
