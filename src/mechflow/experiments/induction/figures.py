"""The induction-heads figures (Elhage et al. 2021; Olsson et al. 2022), drawn from tidy tables.

Each function takes one long-format table (one model), checks its schema, and returns a
``Figure``; saving is ``style.save_figure``'s job. ``source`` names the table in error messages
(steps pass the file path). Nothing here averages duplicate rows: a table with two values for
one cell is an upstream bug and raises.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mechflow.plots.style import (
    PANEL_HEIGHT,
    PANEL_WIDTH,
    FigureKind,
    annotate_cells,
    check_columns,
    check_table,
    figure_style,
    grid,
    model_name,
    new_figure,
    placeholder_figure,
)

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.4  # ARENA's head detector threshold

HEAD_SCORE_COLUMNS = ("model", "layer", "head", "score", "value")
LOSS_BY_POSITION_COLUMNS = ("model", "pos", "half", "loss")
HEAD_ABLATION_COLUMNS = ("model", "layer", "head", "ablation", "loss", "clean_loss", "delta")
PHASE_CHANGE_COLUMNS = ("model", "step", "metric", "value")
COMPOSITION_COLUMNS = (
    "model",
    "kind",
    "layer_from",
    "head_from",
    "layer_to",
    "head_to",
    "score",
    "baseline",
)
COPYING_COLUMNS = HEAD_SCORE_COLUMNS

HEAD_SCORE_ORDER = ("previous_token", "duplicate_token", "induction")
ABLATION_ORDER = ("zero", "mean")
COMPOSITION_ORDER = ("Q", "K", "V")
COPYING_ORDER = ("eigen_ratio", "positive_fraction")
HALF_COLORS = {"first": "tab:blue", "second": "tab:orange"}

# (panel title, y label, ((metric, legend label, colour), ...)) from top to bottom
PHASE_PANELS = (
    (
        "(a) head scores",
        "score",
        (
            ("induction_score", "induction score", "tab:red"),
            ("previous_token_score", "previous-token score", "tab:purple"),
        ),
    ),
    (
        "(b) loss on repeated random tokens",
        "loss (nats)",
        (
            ("first_half_loss", "first half", "tab:blue"),
            ("repeated_half_loss", "repeated half", "tab:orange"),
        ),
    ),
    ("(c) in-context learning", "ICL score (nats)", (("icl_score", "ICL score", "tab:green"),)),
)

SCORE_LABELS = {
    "previous_token": "previous-token score",
    "duplicate_token": "duplicate-token score",
    "induction": "induction score",
    "eigen_ratio": "OV eigenvalue score Σλ/Σ|λ|",
    "positive_fraction": "fraction of eigenvalues > 0",
}

_SEQUENTIAL = matplotlib.colormaps["Blues"].with_extremes(bad="#e0e0e0")
_DIVERGING = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#e0e0e0")


def _ordered(present: Sequence[str], order: Sequence[str]) -> list[str]:
    """Known categories in paper order, then anything else the table holds."""
    present = set(present)
    return [c for c in order if c in present] + sorted(present - set(order))


def _prepare(df: pd.DataFrame, columns: Sequence[str], numeric: Sequence[str], source: str) -> str:
    """Schema checks before any drawing; returns the table's model name."""
    check_table(df, columns, numeric, source)
    return model_name(df, source)


def _panel_grid(
    n_panels: int, n_rows: int, n_cols: int, max_width: float = 15.0
) -> tuple[Figure, list[Axes]]:
    """Heatmap panels sized to their cells, wrapped onto more rows when they get too wide."""
    cell = min(0.45, 6.0 / max(n_rows, n_cols, 1))
    width = max(PANEL_WIDTH * 0.75, cell * n_cols + 1.9)  # + tick labels and colorbar
    height = max(PANEL_HEIGHT * 0.7, cell * n_rows + 1.3)  # + title and x label
    per_row = max(1, min(n_panels, int(max_width // width)))
    grid_rows = math.ceil(n_panels / per_row)
    fig = new_figure(width * per_row, height * grid_rows + 0.4)
    axes = fig.subplots(grid_rows, per_row, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, axes[:n_panels]


def _heatmap(
    ax: Axes,
    matrix: pd.DataFrame,
    cmap,
    norm: Normalize,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    fmt: str = "{:.2f}",
    highlight: np.ndarray | None = None,
    colorbar_label: str | None = None,
):
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in matrix.columns])
    ax.set_yticks(range(values.shape[0]), [str(r) for r in matrix.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)
    annotate_cells(ax, values, cmap, norm, fmt=fmt, bold=highlight)
    if highlight is not None:
        for i, j in zip(*np.nonzero(highlight), strict=True):
            ax.add_patch(
                Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:red", linewidth=2)
            )
    colorbar = None
    if colorbar_label is not None:
        colorbar = ax.figure.colorbar(image, ax=ax, shrink=0.9)
        colorbar.set_label(colorbar_label)
    return image, colorbar


def _range_text(values: pd.Series) -> str:
    """One number when a per-row constant is constant, else its range."""
    low, high = float(values.min()), float(values.max())
    return f"{low:.3f}" if math.isclose(low, high, rel_tol=1e-6) else f"{low:.3f}–{high:.3f}"


def _head_index(df: pd.DataFrame) -> tuple[range, range]:
    """Every layer and head up to the largest seen, so a missing head shows as a grey cell."""
    return range(int(df["layer"].max()) + 1), range(int(df["head"].max()) + 1)


def head_scores_figure(
    df: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
    title: str | None = None,
    source: str = "head_scores table",
) -> Figure:
    """One layers x heads panel per attention-pattern score; heads above ``threshold`` boxed."""
    model = _prepare(df, HEAD_SCORE_COLUMNS, ("layer", "head", "value"), source)
    scores = _ordered(df["score"].astype(str).unique(), HEAD_SCORE_ORDER)
    layers, heads = _head_index(df)
    norm = Normalize(0.0, 1.0)
    with figure_style():
        fig, axes = _panel_grid(len(scores), len(layers), len(heads))
        for ax, score in zip(axes, scores, strict=True):
            matrix = grid(
                df[df["score"].astype(str) == score],
                "layer",
                "head",
                "value",
                source,
                layers,
                heads,
            )
            values = matrix.to_numpy(dtype=float)
            _heatmap(
                ax,
                matrix,
                _SEQUENTIAL,
                norm,
                xlabel="head",
                ylabel="layer",
                title=SCORE_LABELS.get(score, score),
                highlight=np.nan_to_num(values, nan=-np.inf) > threshold,
                colorbar_label="score",
            )
        fig.suptitle(
            f"{title or f'{model}: attention-pattern head scores'}\n"
            f"boxed: score > {threshold:g} (detection threshold)"
        )
    return fig


def loss_by_position_figure(
    df: pd.DataFrame,
    d_vocab: int | None = None,
    title: str | None = None,
    source: str = "loss_by_position table",
) -> Figure:
    """Per-position loss on ``[BOS] + r + r``; induction shows as the drop in the repeated half."""
    if d_vocab is not None and d_vocab < 2:
        raise ValueError(f"d_vocab must be >= 2, got {d_vocab}")
    model = _prepare(df, LOSS_BY_POSITION_COLUMNS, ("pos", "loss"), source)
    halves = df["half"].astype(str)
    unknown = sorted(set(halves) - set(HALF_COLORS))
    if unknown:
        raise ValueError(f"{source}: column 'half' has {unknown}; expected 'first' or 'second'")
    grid(df, "half", "pos", "loss", source)  # one loss per (half, pos), else raises
    with figure_style():
        fig = new_figure(6.4, 3.6)
        ax = fig.add_subplot()
        for half, label in (("first", "first half (random)"), ("second", "repeated half")):
            rows = df[halves == half].sort_values("pos")
            if rows.empty:
                continue
            ax.plot(
                rows["pos"],
                rows["loss"],
                marker="o",
                markersize=2.5,
                linewidth=1.2,
                color=HALF_COLORS[half],
                label=f"{label}: mean {rows['loss'].mean():.2f}",
            )
        if d_vocab is not None:
            uniform = math.log(d_vocab)
            ax.axhline(
                uniform,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"uniform guess ln({d_vocab}) = {uniform:.2f}",
            )
        ax.set_ylim(bottom=0)
        ax.set_xlabel("position in [BOS] + r + r")
        ax.set_ylabel("loss (nats)")
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        ax.set_title(title or f"{model}: loss by position on repeated random tokens")
    return fig


def head_ablation_figure(
    df: pd.DataFrame,
    title: str | None = None,
    source: str = "head_ablation table",
) -> Figure:
    """Loss increase when each head is ablated; one panel per ablation kind, red = head matters."""
    numeric = ("layer", "head", "loss", "clean_loss", "delta")
    model = _prepare(df, HEAD_ABLATION_COLUMNS, numeric, source)
    mismatch = (df["delta"] - (df["loss"] - df["clean_loss"])).abs().max()
    if mismatch > 1e-4:
        logger.warning("%s: delta differs from loss - clean_loss by up to %.3g", source, mismatch)
    kinds = _ordered(df["ablation"].astype(str).unique(), ABLATION_ORDER)
    layers, heads = _head_index(df)
    limit = max(float(df["delta"].abs().max()), 1e-6)
    norm = Normalize(-limit, limit)  # symmetric: white is exactly "no effect"
    constant = math.isclose(df["clean_loss"].min(), df["clean_loss"].max(), rel_tol=1e-6)
    shared_clean = f" (clean loss {_range_text(df['clean_loss'])})" if constant else ""
    with figure_style():
        fig, axes = _panel_grid(len(kinds), len(layers), len(heads))
        for ax, kind in zip(axes, kinds, strict=True):
            rows = df[df["ablation"].astype(str) == kind]
            suffix = "" if shared_clean else f"\nclean loss {_range_text(rows['clean_loss'])}"
            _heatmap(
                ax,
                grid(rows, "layer", "head", "delta", source, layers, heads),
                _DIVERGING,
                norm,
                xlabel="head",
                ylabel="layer",
                title=f"{kind}-ablation{suffix}",
                fmt="{:+.2f}",
                colorbar_label="Δ loss (ablated − clean, nats)",
            )
        fig.suptitle(title or f"{model}: loss increase from ablating one head{shared_clean}")
    return fig


def phase_change_step(df: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> int | None:
    """First training step whose induction score exceeds ``threshold`` (None if it never does)."""
    rows = df[df["metric"].astype(str) == "induction_score"].sort_values("step")
    above = rows[rows["value"] > threshold]
    return None if above.empty else int(above["step"].iloc[0])


def phase_change_figure(
    df: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
    title: str | None = None,
    source: str = "phase_change table",
) -> Figure:
    """Scores, losses and ICL score over training; the induction bump should line up across all."""
    model = _prepare(df, PHASE_CHANGE_COLUMNS, ("step", "value"), source)
    metrics = df["metric"].astype(str)
    grid(df.assign(metric=metrics), "metric", "step", "value", source)  # one value per cell
    known = {name for _, _, lines in PHASE_PANELS for name, _, _ in lines}
    ignored = sorted(set(metrics) - known)
    if ignored:
        logger.info("%s: metrics not plotted: %s", source, ignored)
    step = phase_change_step(df, threshold)
    with figure_style():
        fig = new_figure(6.4, 7.0)
        axes = fig.subplots(3, 1, sharex=True)
        for ax, (panel_title, ylabel, lines) in zip(axes, PHASE_PANELS, strict=True):
            drawn = []
            for name, label, color in lines:
                rows = df[metrics == name].sort_values("step")
                if rows.empty:
                    continue
                ax.plot(rows["step"], rows["value"], color=color, linewidth=1.4, label=label)
                drawn.append(name)
            if not drawn:
                wanted = ", ".join(name for name, _, _ in lines)
                ax.text(
                    0.5,
                    0.5,
                    f"no {wanted} in table",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="grey",
                )
            if ax is axes[0]:
                ax.axhline(
                    threshold,
                    color="grey",
                    linestyle=":",
                    linewidth=1,
                    label=f"threshold {threshold:g}",
                )
                ax.set_ylim(0, 1)
            if ax is axes[2]:
                ax.axhline(0, color="grey", linewidth=0.8)
            if step is not None:  # labelled once: the legend of (a) explains all three
                ax.axvline(
                    step,
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    label=f"phase change (step {step})" if ax is axes[0] else None,
                )
            ax.set_title(panel_title, loc="left")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best")
        axes[-1].set_xlabel("training step")
        note = (
            f"phase change at step {step}"
            if step is not None
            else f"induction score never exceeds {threshold:g}"
        )
        fig.suptitle(f"{title or f'{model}: the induction-head phase change'}\n{note}")
    return fig


def _head_label(layer, head) -> str:
    return f"{int(layer)}.{int(head)}"


def composition_figure(
    df: pd.DataFrame,
    title: str | None = None,
    source: str = "composition table",
) -> Figure:
    """Q/K/V-composition scores between heads of earlier and later layers, against a baseline.

    Rows are writing heads, columns reading heads, both labelled ``layer.head``; with two layers
    that is simply the heads of layer 0 against the heads of layer 1.
    """
    check_columns(df, COMPOSITION_COLUMNS, source)
    if df.empty:
        return placeholder_figure(
            "composition needs ≥ 2 layers\n(the table has no head pairs)",
            title or "composition scores",
        )
    numeric = ("layer_from", "head_from", "layer_to", "head_to", "score", "baseline")
    model = _prepare(df, COMPOSITION_COLUMNS, numeric, source)
    if (df["layer_from"] >= df["layer_to"]).any():
        raise ValueError(f"{source}: every row needs layer_from < layer_to")
    df = df.assign(
        kind=df["kind"].astype(str),
        writer=[
            _head_label(lay, h) for lay, h in zip(df["layer_from"], df["head_from"], strict=True)
        ],
        reader=[_head_label(lay, h) for lay, h in zip(df["layer_to"], df["head_to"], strict=True)],
    )
    writers = (
        df[["layer_from", "head_from", "writer"]]
        .drop_duplicates()
        .sort_values(["layer_from", "head_from"])
    )["writer"].tolist()
    readers = (
        df[["layer_to", "head_to", "reader"]].drop_duplicates().sort_values(["layer_to", "head_to"])
    )["reader"].tolist()
    kinds = _ordered(df["kind"].unique(), COMPOSITION_ORDER)
    top = max(float(df["score"].max()), float(df["baseline"].max()), 1e-6)
    norm = Normalize(0.0, top)  # one scale for Q, K and V so panels compare
    with figure_style():
        fig, axes = _panel_grid(len(kinds), len(writers), len(readers))
        for ax, kind in zip(axes, kinds, strict=True):
            rows = df[df["kind"] == kind]
            baseline = _range_text(rows["baseline"])
            _, colorbar = _heatmap(
                ax,
                grid(rows, "writer", "reader", "score", source, writers, readers),
                _SEQUENTIAL,
                norm,
                xlabel=f"reading head (via {kind})",
                ylabel="writing head",
                title=f"{kind}-composition (baseline {baseline})",
                colorbar_label="score (line = baseline)",
            )
            for value in sorted(set(rows["baseline"].round(6))):
                colorbar.ax.axhline(value, color="tab:red", linewidth=1.5)
        fig.suptitle(title or f"{model}: composition scores ‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F)")
    return fig


def copying_figure(
    df: pd.DataFrame,
    title: str | None = None,
    source: str = "copying table",
) -> Figure:
    """OV-circuit eigenvalue scores per head: near +1 means the head copies its attended token."""
    model = _prepare(df, COPYING_COLUMNS, ("layer", "head", "value"), source)
    scores = _ordered(df["score"].astype(str).unique(), COPYING_ORDER)
    layers, heads = _head_index(df)
    with figure_style():
        fig, axes = _panel_grid(len(scores), len(layers), len(heads))
        for ax, score in zip(axes, scores, strict=True):
            diverging = score == "eigen_ratio"
            cmap, norm = (
                (_DIVERGING, Normalize(-1.0, 1.0)) if diverging else (_SEQUENTIAL, Normalize(0, 1))
            )
            _heatmap(
                ax,
                grid(
                    df[df["score"].astype(str) == score],
                    "layer",
                    "head",
                    "value",
                    source,
                    layers,
                    heads,
                ),
                cmap,
                norm,
                xlabel="head",
                ylabel="layer",
                title=SCORE_LABELS.get(score, score),
                fmt="{:+.2f}" if diverging else "{:.2f}",
                colorbar_label="+1 copies, −1 anti-copies" if diverging else "fraction",
            )
        fig.suptitle(title or f"{model}: copying (OV-circuit eigenvalues)")
    return fig


# The figures of this experiment, as the generic figure step draws them (plot_<name> rules).
FIGURES = {
    "head_scores": FigureKind(
        draw=head_scores_figure, tables={"table": "source"}, options={"threshold": float}
    ),
    "loss_by_position": FigureKind(
        draw=loss_by_position_figure, tables={"table": "source"}, options={"d_vocab": int}
    ),
    "head_ablation": FigureKind(draw=head_ablation_figure, tables={"table": "source"}),
    "composition": FigureKind(draw=composition_figure, tables={"table": "source"}),
    "copying": FigureKind(draw=copying_figure, tables={"table": "source"}),
    "phase_change": FigureKind(
        draw=phase_change_figure, tables={"table": "source"}, options={"threshold": float}
    ),
}
