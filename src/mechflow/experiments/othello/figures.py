"""The OthelloGPT figures (Li et al. 2023; Nanda 2023), drawn from tidy tables.

- ``legal_moves_figure``: does the model play legal moves? Its top-1 legality and its KL to the
  uniform distribution over the legal moves, by position, against its random-init control.
- ``probe_accuracy_figure``: the headline: a linear board exists relative to the mover
  (mine/theirs) and not in colours (black/white), layer by layer, against a randomly
  initialised model, shuffled labels and the majority class; beside it the legal-move and
  flipped-stone probes.
- ``boards_figure``: one held-out game's true board next to what the relative probes read, at
  the layer where they are most accurate.
- ``interventions_figure``: editing the residual stream along a square's probe makes the moves
  follow the edited board; an edit of the same size in a random direction does not.
- ``attribution_figure``: direct logit attribution to the predicted move, and activation
  patching of one swapped move.
- ``neurons_figure``: MLP neurons read in the probe basis (their output weights' cosines with
  each square's directions) and their mean activation by the state of each square.

Boards are drawn as ``mechflow.data.othello`` numbers the squares (``row * size + col``): columns
A.. from left to right, rows 1.. from top to bottom, so square 0 is A1 at the top left and square
27 of 8x8 is D4. Every function checks its tables' schema before drawing and returns a
``Figure``. This module imports no torch: figures never touch a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from mechflow.experiments.othello.labels import CLASSES
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

# The producers' columns (a test keeps them equal: evaluate, probing, interventions, attribution)
LEGAL_COLUMNS = (
    "model", "position", "positions", "top1_legal", "legal_mass", "cross_entropy",
    "kl_to_uniform_legal", "uniform_legal_entropy",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "model", "condition", "layer", "label", "accuracy", "baseline", "worst_square", "probes",
)  # fmt: skip
BOARD_COLUMNS = (
    "game", "position", "layer", "square", "relative", "board", "p_empty", "p_mine", "p_theirs",
    "p_black", "p_white",
)  # fmt: skip
INTERVENTION_COLUMNS = (
    "hook",
    "condition",
    "scale",
    "edits",
    "success",
    "unchanged",
    "mean_margin",
)
DLA_COLUMNS = ("component", "kind", "layer", "head", "mean", "sd", "rows")
PATCH_COLUMNS = (
    "move", "kind", "layer", "head", "position", "effect", "games", "clean_score",
    "corrupted_score",
)  # fmt: skip
NEURON_COLUMNS = ("layer", "neuron", "rank", "score", "square", "direction", "cosine")
STATE_COLUMNS = ("layer", "neuron", "label", "square", "state", "mean_activation", "rows")

# probe condition -> line style; label -> (legend name, colour); the two panels' labels
CONDITION_STYLE = {
    "trained": {"lw": 2.0, "marker": "o", "ms": 3.5},
    "random init": {"lw": 1.2, "ls": "--", "alpha": 0.6},
    "shuffled labels": {"lw": 1.2, "ls": ":", "alpha": 0.6},
}
BASELINE_STYLE = {"lw": 0.8, "ls": "-."}
PROBE_LABELS = {
    "relative": ("mine/theirs/empty", "tab:blue"),
    "board": ("black/white/empty", "tab:orange"),
    "legal": ("legal next move", "tab:green"),
    "flipped": ("flipped by the last move", "tab:purple"),
}
PROBE_PANELS = (
    (("relative", "board"), "the board, in two bases"),
    (("legal", "flipped"), "legal moves and flipped stones"),
)
EDITS = {  # intervention condition -> legend text (the order of interventions.CONDITIONS)
    "none": "no edit",
    "random": "random direction, same norm",
    "probe": "along the probe",
}
PATCH_KINDS = ("resid_pre", "attn_out", "mlp_out", "z")
DIRECTIONS = {"theirs_minus_mine": "cos, theirs − mine", "empty": "cos, empty"}
RELATIVE = CLASSES["relative"][0]  # empty, mine, theirs: the codes 0, 1, 2

EMPTY_COLOR = "#f2f2f2"
_DIVERGING = matplotlib.colormaps["RdBu"].with_extremes(bad="#e0e0e0")
_SEQUENTIAL = matplotlib.colormaps["viridis"].with_extremes(bad="#e0e0e0")
# the true board in the prediction's colours: mine blue (P(mine) - P(theirs) = +1), theirs red
_STATES = ListedColormap([EMPTY_COLOR, _DIVERGING(0.9), _DIVERGING(0.1)]).with_extremes(bad="white")
_STATE_NORM = Normalize(-0.5, 2.5)
EFFECT_LABEL = "normalised logit difference (1 clean, 0 swapped)"


def _checked(
    df: pd.DataFrame,
    columns: Sequence[str],
    text: Sequence[str],
    source: str,
    empty_ok: bool = False,
) -> bool:
    """:func:`check_table` with every column not in ``text`` numeric."""
    numeric = [c for c in columns if c not in text]
    return check_table(df, columns, numeric, source, empty_ok=empty_ok)


def _known(df: pd.DataFrame, column: str, known: Sequence[str], source: str) -> pd.Series:
    values = df[column].astype(str)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{source}: column {column!r} has {unknown}; expected {list(known)}")
    return values


def _unique(df: pd.DataFrame, keys: Sequence[str], source: str) -> None:
    dupes = df.duplicated(subset=list(keys), keep=False)
    if dupes.any():
        raise ValueError(f"{source}: more than one row for {df.loc[dupes, keys].iloc[0].to_dict()}")


def square_name(square: int, size: int) -> str:
    """``row * size + col`` -> column letter and row number: 0 is A1, 27 of 8x8 is D4."""
    row, col = divmod(int(square), size)
    return f"{chr(ord('A') + col)}{row + 1}"


def _board_size(n_squares: int, source: str) -> int:
    size = math.isqrt(n_squares)
    if size < 2 or size * size != n_squares:
        raise ValueError(f"{source}: squares 0..{n_squares - 1} are no square board")
    return size


def _by_square(rows: pd.DataFrame, column: str, n_squares: int, source: str) -> np.ndarray:
    """One board's ``column`` in square order; NaN where the table has no row."""
    _unique(rows, ["square"], source)
    squares = rows["square"].to_numpy(dtype=int)
    if ((squares < 0) | (squares >= n_squares)).any():
        raise ValueError(f"{source}: squares outside 0..{n_squares - 1}")
    out = np.full(n_squares, np.nan)
    out[squares] = rows[column].to_numpy(dtype=float)
    return out


def board_image(
    ax: Axes,
    values: np.ndarray,
    size: int,
    cmap,
    norm: Normalize,
    alpha: np.ndarray | None = None,
) -> AxesImage:
    """One board from values in square order: A.. left to right, 1.. top to bottom."""
    shaped = None if alpha is None else np.asarray(alpha, dtype=float).reshape(size, size)
    image = ax.imshow(
        np.asarray(values, dtype=float).reshape(size, size), cmap=cmap, norm=norm, alpha=shaped
    )
    ax.set_xticks(range(size), [chr(ord("A") + col) for col in range(size)])
    ax.set_yticks(range(size), [str(row + 1) for row in range(size)])
    ax.tick_params(length=0, labelsize=6, pad=1)
    for side in ax.spines.values():
        side.set_visible(False)
    return image


def _layer_head(ax: Axes, rows: pd.DataFrame, value: str, source: str, bound: float) -> AxesImage:
    """A layer x head heatmap, colours symmetric about 0."""
    layers, heads = range(int(rows["layer"].max()) + 1), range(int(rows["head"].max()) + 1)
    values = grid(rows, "layer", "head", value, source, layers, heads).to_numpy(dtype=float)
    norm = Normalize(-bound, bound)
    image = ax.imshow(values, cmap=_DIVERGING, norm=norm, aspect="auto")
    ax.set_xticks(heads, [str(h) for h in heads])
    ax.set_yticks(layers, [str(layer) for layer in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.tick_params(length=0)
    annotate_cells(ax, values, _DIVERGING, norm)
    return image


def _bound(values: pd.Series, floor: float = 0.0) -> float:
    top = float(np.nanmax(np.abs(values.to_numpy(dtype=float)))) if len(values) else 0.0
    return max(floor, top if np.isfinite(top) else 0.0) or 1.0


def legal_moves_figure(
    legal: pd.DataFrame,
    control: pd.DataFrame,
    source: str = "legal",
    control_source: str = "control_legal",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """A model that learned the rules puts its top move on a legal square and spreads its
    probability over the legal ones; the random-init control shows what chance looks like."""
    names = []
    for df, src in ((legal, source), (control, control_source)):
        _checked(df, LEGAL_COLUMNS, ("model",), src)
        _unique(df, ["position"], src)
        names.append(model_name(df, src))
    runs = (("trained", legal, "tab:blue", "-"), ("random init", control, "tab:gray", "--"))
    with figure_style():
        fig = new_figure(9.5, 3.8)
        rate_ax, kl_ax = fig.subplots(1, 2)
        for (what, df, color, ls), name in zip(runs, names, strict=True):
            df = df.sort_values("position")
            x = df["position"].to_numpy()
            rate_ax.plot(
                x,
                df["top1_legal"],
                color=color,
                ls=ls,
                lw=1.6,
                label=f"{what} ({name}): top-1 legal",
                gid=f"{what}/top1_legal",
            )
            rate_ax.plot(
                x,
                df["legal_mass"],
                color=color,
                ls=":",
                lw=0.9,
                alpha=0.7,
                label=f"{what}: probability on legal moves",
                gid=f"{what}/legal_mass",
            )
            kl_ax.plot(
                x,
                df["kl_to_uniform_legal"],
                color=color,
                ls=ls,
                lw=1.6,
                label=f"{what} ({name})",
                gid=f"{what}/kl_to_uniform_legal",
            )
        target = legal.sort_values("position")
        kl_ax.plot(
            target["position"],
            target["uniform_legal_entropy"],
            color="0.5",
            ls=":",
            lw=0.9,
            label="log #legal (the target's entropy)",
            gid="uniform_legal_entropy",
        )
        rate_ax.set_ylim(-0.02, 1.02)
        rate_ax.set_ylabel("mean over games")
        rate_ax.set_title("legality of the next-move prediction", loc="left")
        kl_ax.set_ylabel("KL(uniform over legal ‖ model) (nats)")
        kl_ax.set_title("distance to the true next-move distribution", loc="left")
        for ax in (rate_ax, kl_ax):
            ax.set_xlabel("position (moves read)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(title or titled("legal moves by position", model or names[0]))
    return fig


def _probe_summary(summary: pd.DataFrame, source: str) -> tuple[str, pd.DataFrame]:
    """The trained model's name and the table with text ``condition``/``label``."""
    _checked(summary, SUMMARY_COLUMNS, ("model", "condition", "label"), source)
    summary = summary.assign(
        condition=_known(summary, "condition", CONDITION_STYLE, source),
        label=_known(summary, "label", PROBE_LABELS, source),
    )
    _unique(summary, ["condition", "layer", "label"], source)
    trained = summary[summary["condition"] == "trained"]
    if trained.empty:
        raise ValueError(f"{source}: no rows of condition 'trained'")
    return model_name(trained, source), summary


def best_probe_layer(summary: pd.DataFrame, source: str = "probe_summary") -> tuple[int, float]:
    """The layer whose trained relative (mine/theirs/empty) probes are most accurate (the
    earliest of ties), and that accuracy."""
    _, summary = _probe_summary(summary, source)
    rows = summary[(summary["condition"] == "trained") & (summary["label"] == "relative")]
    rows = rows.dropna(subset=["accuracy"]).sort_values("layer")
    if rows.empty:
        raise ValueError(f"{source}: no trained 'relative' probe with an accuracy")
    best = rows.loc[rows["accuracy"].idxmax()]  # the first maximum: the earliest layer
    return int(best["layer"]), float(best["accuracy"])


def _probe_lines(ax: Axes, rows: pd.DataFrame, label: str) -> None:
    """One label's accuracy per condition, and its majority class (the same labels in every
    condition, so the first condition's)."""
    name, color = PROBE_LABELS[label]
    for condition, style in CONDITION_STYLE.items():
        line = rows[rows["condition"] == condition].sort_values("layer")
        if len(line):
            ax.plot(
                line["layer"],
                line["accuracy"],
                color=color,
                **style,
                label=name,
                gid=f"{label}/{condition}",
            )
    rank = rows["condition"].map({c: i for i, c in enumerate(CONDITION_STYLE)})
    base = rows.assign(rank=rank).sort_values(["rank", "layer"]).drop_duplicates("layer")
    if len(base):
        base = base.sort_values("layer")
        ax.plot(
            base["layer"],
            base["baseline"],
            color=color,
            **BASELINE_STYLE,
            label=name,
            gid=f"{label}/baseline",
        )


def probe_accuracy_figure(
    summary: pd.DataFrame,
    source: str = "probe_summary",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """Per layer, the probes' mean accuracy over squares: trained solid, the controls lighter,
    the majority class thin; a basis the model uses stands far above all three."""
    table_model, summary = _probe_summary(summary, source)
    layers = sorted(int(layer) for layer in summary["layer"].unique())
    with figure_style():
        fig = new_figure(10.0, 4.4)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, (labels, panel) in zip(axes, PROBE_PANELS, strict=True):
            present = [label for label in labels if (summary["label"] == label).any()]
            for label in present:
                _probe_lines(ax, summary[summary["label"] == label], label)
            handles = [
                Line2D([], [], color=PROBE_LABELS[k][1], lw=2, label=PROBE_LABELS[k][0])
                for k in present
            ]
            if handles:
                ax.legend(handles=handles, fontsize=7, framealpha=0.7)
            else:
                ax.text(
                    0.5,
                    0.5,
                    f"no {' or '.join(labels)} probes",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
            ax.set_xticks(layers)
            ax.set_xlabel("layer (residual stream after l blocks)")
            ax.set_title(panel, loc="left")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("mean validation accuracy over squares")
        styles = [
            Line2D([], [], color="0.3", **style, label=condition)
            for condition, style in CONDITION_STYLE.items()
        ]
        styles.append(Line2D([], [], color="0.3", **BASELINE_STYLE, label="majority class"))
        fig.legend(handles=styles, loc="outside lower center", ncols=len(styles))
        fig.suptitle(title or titled("linear probes of the board by layer", model or table_model))
    return fig


def boards_figure(
    boards: pd.DataFrame,
    summary: pd.DataFrame,
    source: str = "probe_boards",
    summary_source: str = "probe_summary",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """Per example position, the true board (top) and the relative probes' reading (bottom):
    P(mine) − P(theirs) in colour, faded by P(empty), a cross where the most probable state is
    wrong; at the layer where those probes are most accurate."""
    table_model, _ = _probe_summary(summary, summary_source)
    layer, accuracy = best_probe_layer(summary, summary_source)
    title = title or titled(
        f"the board read by the probes at layer {layer} (accuracy {accuracy:.3f})",
        model or table_model,
    )
    if not _checked(boards, BOARD_COLUMNS, (), source, empty_ok=True):
        return placeholder_figure("no example board: the table has no rows", title)
    if boards["game"].nunique() != 1:
        raise ValueError(f"{source}: expected one game, found {sorted(boards['game'].unique())}")
    n_squares = int(boards["square"].max()) + 1
    size = _board_size(n_squares, source)
    at = boards[boards["layer"] == layer]
    if at.empty:
        raise ValueError(
            f"{source}: no rows at layer {layer}, where the relative probes of {summary_source} "
            "are most accurate"
        )
    positions = sorted(int(p) for p in at["position"].unique())
    with figure_style():
        fig = new_figure(max(4.5, 1.9 * len(positions) + 1.4), 4.9)
        axes = fig.subplots(2, len(positions), squeeze=False)
        for j, position in enumerate(positions):
            rows = at[at["position"] == position]
            true = _by_square(rows, "relative", n_squares, source)
            p_empty, p_mine, p_theirs = (
                _by_square(rows, f"p_{state}", n_squares, source) for state in RELATIVE
            )
            board_image(axes[0, j], true, size, _STATES, _STATE_NORM)
            image = board_image(
                axes[1, j],
                p_mine - p_theirs,
                size,
                _DIVERGING,
                Normalize(-1, 1),
                alpha=np.clip(1.0 - np.nan_to_num(p_empty), 0.0, 1.0),
            )
            axes[1, j].set_facecolor(
                EMPTY_COLOR
            )  # a square read as empty fades to the empty colour
            predicted = np.stack([p_empty, p_mine, p_theirs]).argmax(0)
            wrong = np.flatnonzero(np.isfinite(true) & (predicted != true))
            row, col = np.divmod(wrong, size)
            axes[1, j].scatter(
                col, row, marker="x", s=14, color="black", lw=0.8, gid=f"wrong-{position}"
            )
            axes[0, j].set_title(f"after move {position}")
            axes[1, j].set_title(f"{len(wrong)} square{'s' * (len(wrong) != 1)} wrong", fontsize=8)
        axes[0, 0].set_ylabel("true board")
        axes[1, 0].set_ylabel(f"probes, layer {layer}")
        fig.colorbar(
            image, ax=axes[1, :].tolist(), shrink=0.9, label="P(mine) − P(theirs)\nfaded: P(empty)"
        )
        handles = [
            Patch(facecolor=_STATES(_STATE_NORM(i)), edgecolor="0.6", label=state)
            for i, state in enumerate(RELATIVE)
        ]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=3,
            title="the side to move's view; × the probe's most probable state is wrong",
        )
        fig.suptitle(title)
    return fig


def interventions_figure(
    df: pd.DataFrame,
    source: str = "interventions",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """How often the model's moves become the edited board's, and what the edited square's
    probe reads after the edit, against the edit's scale; one colour per hook edited."""
    _checked(df, INTERVENTION_COLUMNS, ("hook", "condition"), source)
    df = df.assign(hook=df["hook"].astype(str), condition=_known(df, "condition", EDITS, source))
    if df.loc[df["condition"] == "none", "scale"].notna().any():
        raise ValueError(f"{source}: a 'none' row has a scale (no edit has none)")
    if df.loc[df["condition"] != "none", "scale"].isna().any():
        raise ValueError(f"{source}: a 'random' or 'probe' row has no scale")
    _unique(df, ["hook", "condition", "scale"], source)
    hooks = list(dict.fromkeys(df["hook"]))
    colors = matplotlib.colormaps["tab10"].colors
    lines = {
        "probe": {"marker": "o", "ms": 4, "lw": 1.8},
        "random": {"marker": "s", "ms": 3.5, "ls": "--", "lw": 1.2, "alpha": 0.6},
    }
    with figure_style():
        fig = new_figure(10.0, 4.0)
        success_ax, margin_ax = fig.subplots(1, 2)
        for i, hook in enumerate(hooks):
            rows, color = df[df["hook"] == hook], colors[i % len(colors)]
            suffix = f" ({hook})" if len(hooks) > 1 else ""
            for condition, style in lines.items():
                line = rows[rows["condition"] == condition].sort_values("scale")
                for ax, column in ((success_ax, "success"), (margin_ax, "mean_margin")):
                    ax.plot(
                        line["scale"],
                        line[column],
                        color=color,
                        **style,
                        label=EDITS[condition] + suffix,
                        gid=f"{hook}/{condition}",
                    )
            for row in rows[rows["condition"] == "none"].itertuples():
                for ax, value in ((success_ax, row.success), (margin_ax, row.mean_margin)):
                    ax.axhline(
                        value,
                        color=color,
                        ls=":",
                        lw=1.0,
                        label=EDITS["none"] + suffix,
                        gid=f"{hook}/none",
                    )
        edits = ", ".join(sorted({str(int(n)) for n in df["edits"]}))
        success_ax.set_ylim(-0.02, 1.02)
        success_ax.set_ylabel("share of edits")
        success_ax.set_title(
            f"top-k moves = the edited board's legal set ({edits} edits)", loc="left"
        )
        margin_ax.axhline(0.0, color="black", lw=0.6)
        margin_ax.set_ylabel("logit(theirs) − logit(mine)")
        margin_ax.set_title("the edited square's probe after the edit (> 0: theirs)", loc="left")
        for ax in (success_ax, margin_ax):
            ax.set_xlabel("scale (0: onto the probe's boundary, 1: mirrored across it)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        where = f" at {hooks[0]}" if len(hooks) == 1 else ""
        fig.suptitle(title or titled(f"editing the board the probes read{where}", model))
    return fig


def _dla_panels(subfig, dla: pd.DataFrame, source: str) -> None:
    """Heads as a layer x head heatmap, every other component as a bar (± its sd over rows)."""
    heads, others = dla[dla["kind"] == "head"], dla[dla["kind"] != "head"]
    bar_ax, head_ax = subfig.subplots(1, 2, width_ratios=[1.3, 1.0])
    colors = [_DIVERGING(0.85) if m >= 0 else _DIVERGING(0.15) for m in others["mean"]]
    bar_ax.barh(
        range(len(others)),
        others["mean"],
        xerr=others["sd"].fillna(0.0),
        color=colors,
        error_kw={"elinewidth": 0.7, "ecolor": "0.3"},
    )
    bar_ax.set_yticks(range(len(others)), others["component"].astype(str), fontsize=7)
    bar_ax.invert_yaxis()
    bar_ax.axvline(0, color="black", lw=0.8)
    bar_ax.set_xlabel("mean direct logit attribution (± sd)")
    bar_ax.set_title("embeddings, MLPs and biases", loc="left")
    bar_ax.grid(alpha=0.3, axis="x")
    subfig.suptitle(
        "direct logit attribution to the top-1 move − the mean legal move "
        f"({int(dla['rows'].max())} positions)"
    )
    if heads.empty:
        head_ax.set_axis_off()
        return
    image = _layer_head(head_ax, heads, "mean", source, _bound(heads["mean"]))
    head_ax.set_title("heads", loc="left")
    subfig.colorbar(image, ax=head_ax, shrink=0.9, label="mean direct logit attribution")


def _output_bars(ax: Axes, rows: pd.DataFrame, move: int, source: str) -> None:
    """attn_out and mlp_out side by side per layer, patched where the metric is read."""
    for offset, kind, color in ((-0.2, "attn_out", "tab:purple"), (0.2, "mlp_out", "tab:orange")):
        bars = rows[rows["kind"] == kind].sort_values("layer")
        _unique(bars, ["layer"], source)
        if len(bars):
            ax.bar(bars["layer"] + offset, bars["effect"], width=0.4, color=color, label=kind)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.axhline(1.0, color="black", lw=0.6, ls="--")
    ax.set_xticks(sorted(int(layer) for layer in rows["layer"].unique()))
    ax.set_xlabel("layer")
    ax.set_ylabel(EFFECT_LABEL)
    read = sorted(int(p) for p in rows["position"].unique())
    where = f"position {read[0]}" if len(read) == 1 else f"positions {read}"
    ax.set_title(f"block outputs at {where}", loc="left")
    ax.legend(fontsize=7)


def _resid_heatmap(ax: Axes, rows: pd.DataFrame, move: int, source: str, bound: float):
    layers = range(int(rows["layer"].max()) + 1)
    positions = sorted(int(p) for p in rows["position"].unique())
    values = grid(rows, "layer", "position", "effect", source, layers, positions)
    image = ax.imshow(
        values.to_numpy(dtype=float), cmap=_DIVERGING, norm=Normalize(-bound, bound), aspect="auto"
    )
    step = max(1, len(positions) // 12)
    ax.set_xticks(range(0, len(positions), step), [str(p) for p in positions[::step]])
    ax.set_yticks(layers, [str(layer) for layer in layers])
    ax.set_xlabel(f"position (move {move} swapped)")
    ax.set_ylabel("layer")
    ax.set_title("residual stream (resid_pre)", loc="left")
    return image


def _patching_panels(subfig, patching: pd.DataFrame, source: str) -> None:
    """Heads (z) by layer x head, block outputs at the swapped move by layer, the residual
    stream by layer x position: the kinds the table holds, on one colour scale."""
    patching = patching.assign(kind=_known(patching, "kind", PATCH_KINDS, source))
    if patching["move"].nunique() != 1:
        raise ValueError(f"{source}: expected one move, found {sorted(patching['move'].unique())}")
    first = patching.iloc[0]
    move, bound = int(first["move"]), _bound(patching["effect"], floor=1.0)
    present = set(patching["kind"])
    outputs = patching[patching["kind"].isin(["attn_out", "mlp_out"])]
    # the bars first, so their axis label is not read as the heatmaps' colorbar's
    panels = (["outputs"] if len(outputs) else []) + [k for k in ("z", "resid_pre") if k in present]
    axes = np.atleast_1d(subfig.subplots(1, len(panels)))
    images = []
    for ax, panel in zip(axes, panels, strict=True):
        rows = patching[patching["kind"] == panel]
        if panel == "z":
            images.append(_layer_head(ax, rows, "effect", source, bound))
            ax.set_title("heads, every position (z)", loc="left")
        elif panel == "resid_pre":
            images.append(_resid_heatmap(ax, rows, move, source, bound))
        else:
            _output_bars(ax, outputs, move, source)
    if images:
        heatmaps = [ax for ax, panel in zip(axes, panels, strict=True) if panel != "outputs"]
        subfig.colorbar(images[0], ax=heatmaps, shrink=0.9, label=EFFECT_LABEL)
    subfig.suptitle(
        f"patching clean into the game with move {move} swapped ({int(first['games'])} games; "
        f"logit difference clean {first['clean_score']:.2f}, swapped "
        f"{first['corrupted_score']:.2f})"
    )


def attribution_figure(
    dla: pd.DataFrame,
    patching: pd.DataFrame,
    source: str = "move_attribution",
    patching_source: str = "move_patching",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """What writes the predicted move (direct logit attribution, top), and which activations
    carry one move's effect on the next legal set (activation patching, bottom)."""
    _checked(dla, DLA_COLUMNS, ("component", "kind"), source)
    has_patching = _checked(patching, PATCH_COLUMNS, ("kind",), patching_source, empty_ok=True)
    dla = dla.assign(kind=dla["kind"].astype(str))
    with figure_style():
        fig = new_figure(12.0, 8.0)
        top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.0])
        _dla_panels(top, dla, source)
        if has_patching:
            _patching_panels(bottom, patching, patching_source)
        else:
            ax = bottom.add_subplot()
            ax.set_axis_off()
            ax.text(
                0.5,
                0.5,
                "no patching results: the table has no rows",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        fig.suptitle(title or titled("what the model's move is made of", model))
    return fig


def _states(activations: pd.DataFrame, source: str) -> tuple[tuple[str, ...], pd.Series]:
    """The label's state names and each row's, from names or codes (0, 1, 2: the classes'
    order in ``labels.CLASSES``)."""
    labels = activations["label"].astype(str).unique()
    if len(labels) != 1 or labels[0] not in CLASSES:
        raise ValueError(f"{source}: expected rows of one square label, found {sorted(labels)}")
    names = CLASSES[labels[0]][0]
    state = activations["state"]
    if pd.api.types.is_numeric_dtype(state):
        codes = state.to_numpy()
        if not np.isin(codes, range(len(names))).all():
            raise ValueError(f"{source}: column 'state' has codes outside 0..{len(names) - 1}")
        return names, pd.Series(np.asarray(names)[codes.astype(int)], index=state.index)
    return names, _known(activations, "state", names, source)


def _neuron_row(
    subfig, cosines, activations, states, size: int, cos_bound: float, sources: tuple[str, str]
) -> None:
    """One neuron: its cosine with each probe direction, then its mean activation per state."""
    n_squares = size * size
    axes = subfig.subplots(1, len(DIRECTIONS) + len(states))
    for ax, (direction, what) in zip(axes, DIRECTIONS.items(), strict=False):
        rows = cosines[cosines["direction"] == direction]
        values = _by_square(rows, "cosine", n_squares, sources[0])
        image = board_image(ax, values, size, _DIVERGING, Normalize(-cos_bound, cos_bound))
        ax.set_title(what, fontsize=8)
    subfig.colorbar(image, ax=axes[: len(DIRECTIONS)].tolist(), shrink=0.8, label="cosine")
    means = [
        _by_square(activations[activations["state"] == s], "mean_activation", n_squares, sources[1])
        for s in states
    ]
    finite = np.concatenate(means)[np.isfinite(np.concatenate(means))]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    norm = Normalize(low, high if high > low else low + 1e-6)
    for ax, state, values in zip(axes[len(DIRECTIONS) :], states, means, strict=True):
        image = board_image(ax, values, size, _SEQUENTIAL, norm)
        ax.set_title(f"activation | {state}", fontsize=8)
    subfig.colorbar(image, ax=axes[len(DIRECTIONS) :].tolist(), shrink=0.8, label="mean activation")


def neurons_figure(
    neurons: pd.DataFrame,
    activations: pd.DataFrame,
    source: str = "neurons",
    activations_source: str = "neuron_activations",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """Per chosen neuron (a row): where its output weights point in the probe basis, and which
    squares' states turn it on; a board-state neuron shows the same squares in both."""
    title = title or titled("MLP neurons in the probe basis", model)
    if not _checked(neurons, NEURON_COLUMNS, ("direction",), source, empty_ok=True):
        return placeholder_figure("no neuron chosen\n(an attention-only model has none)", title)
    _checked(activations, STATE_COLUMNS, ("label", "state"), activations_source)
    neurons = neurons.assign(direction=_known(neurons, "direction", DIRECTIONS, source))
    states, state = _states(activations, activations_source)
    activations = activations.assign(state=state)
    chosen = neurons.drop_duplicates(["layer", "neuron"]).sort_values(["rank", "layer", "neuron"])
    keys = {(int(r.layer), int(r.neuron)) for r in chosen.itertuples()}
    pairs = activations[["layer", "neuron"]].astype(int).drop_duplicates()
    measured = set(pairs.itertuples(index=False, name=None))
    if keys != measured:
        raise ValueError(
            f"{activations_source}: activations of neurons {sorted(measured)}, but {source} "
            f"chose {sorted(keys)}"
        )
    n_squares = int(max(neurons["square"].max(), activations["square"].max())) + 1
    size = _board_size(n_squares, activations_source)
    cos_bound = _bound(neurons["cosine"])
    with figure_style():
        n_cols = len(DIRECTIONS) + len(states)
        fig = new_figure(1.7 * n_cols + 2.2, 2.3 * len(chosen) + 0.5)
        subfigs = np.atleast_1d(fig.subfigures(len(chosen), 1))
        for subfig, row in zip(subfigs, chosen.itertuples(), strict=True):
            mine = (neurons["layer"] == row.layer) & (neurons["neuron"] == row.neuron)
            theirs = (activations["layer"] == row.layer) & (activations["neuron"] == row.neuron)
            _neuron_row(
                subfig,
                neurons[mine],
                activations[theirs],
                states,
                size,
                cos_bound,
                (source, activations_source),
            )
            subfig.suptitle(
                f"L{int(row.layer)} neuron {int(row.neuron)}: {row.score:.2f} of its "
                "‖W_out‖² in the probes' span",
                fontsize=9,
            )
        fig.suptitle(title)
    return fig


# The figures of this experiment, as the generic figure step draws them (plot_<name> rules).
FIGURES = {
    "legal_moves": FigureKind(
        draw=legal_moves_figure,
        tables={"legal": "source", "control_legal": "control_source"},
        options={"model": str},
    ),
    "probe_accuracy": FigureKind(
        draw=probe_accuracy_figure, tables={"probe_summary": "source"}, options={"model": str}
    ),
    "boards": FigureKind(
        draw=boards_figure,
        tables={"probe_boards": "source", "probe_summary": "summary_source"},
        options={"model": str},
    ),
    "interventions": FigureKind(
        draw=interventions_figure, tables={"interventions": "source"}, options={"model": str}
    ),
    "attribution": FigureKind(
        draw=attribution_figure,
        tables={"move_attribution": "source", "move_patching": "patching_source"},
        options={"model": str},
    ),
    "neurons": FigureKind(
        draw=neurons_figure,
        tables={"neurons": "source", "neuron_activations": "activations_source"},
        options={"model": str},
    ),
}
