"""Figures of the grokking experiment (Nanda et al. 2023), drawn only from the run's tables."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mechflow.plots.style import (
    FigureKind,
    check_columns,
    check_numeric,
    figure_style,
    model_name,
    new_figure,
    titled,
)

logger = logging.getLogger(__name__)

PHASE_COLORS = {"memorisation": "#fde0c5", "circuit formation": "#d9ecd0", "cleanup": "#d6e4f5"}
LOG_COLUMNS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
PHASE_COLUMNS = ["phase", "start_epoch", "end_epoch"]
PROGRESS_COLUMNS = ["model", "epoch", "metric", "value"]
EMBEDDING_COLUMNS = ["model", "frequency", "component", "norm", "share"]
MAP_COLUMNS = ["model", "kind", "unit", "frequency", "a", "b", "value"]


def shade_phases(ax: Axes, phases: pd.DataFrame, label: bool) -> None:
    """Shade each phase that the run reached; its end is read from the progress measures."""
    for row in phases.itertuples():
        if math.isnan(row.start_epoch) or math.isnan(row.end_epoch):
            continue
        start = max(row.start_epoch, 1.0)  # log-x axes cannot show epoch 0
        ax.axvspan(
            start,
            row.end_epoch,
            color=PHASE_COLORS.get(row.phase, "#eeeeee"),
            alpha=0.8,
            linewidth=0,
            label=row.phase if label else None,
            zorder=0,
        )


def _phase_note(phases: pd.DataFrame) -> str:
    ends = phases.set_index("phase")["end_epoch"]
    grokked = ends.get("cleanup", float("nan"))
    return (
        "never reached 99% test accuracy"
        if math.isnan(grokked)
        else f"grokked at epoch {grokked:.0f}"
    )


def _check_phases(phases: pd.DataFrame, source: str) -> None:
    check_columns(phases, PHASE_COLUMNS, source)
    check_numeric(phases, ["start_epoch", "end_epoch"], source)


def grokking_curves_figure(
    log_df: pd.DataFrame, phases: pd.DataFrame, source: str = "train_log", title: str | None = None
) -> Figure:
    """Train and test loss (log-log) and accuracy over epochs, phases shaded; the run is named
    by the phases table (the train log has no model column)."""
    check_columns(log_df, LOG_COLUMNS, source)
    check_numeric(log_df, LOG_COLUMNS, source)
    _check_phases(phases, source)
    check_columns(phases, ["model"], f"{source} (phases)")
    run = model_name(phases, f"{source} (phases)")
    df = log_df[log_df["epoch"] > 0].sort_values("epoch")  # log x
    with figure_style():
        fig = new_figure(6.4, 5.6)
        loss_ax, acc_ax = fig.subplots(2, 1, sharex=True)
        for ax in (loss_ax, acc_ax):
            shade_phases(ax, phases, label=ax is loss_ax)
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        loss_ax.plot(df["epoch"], df["train_loss"], color="tab:blue", label="train")
        loss_ax.plot(df["epoch"], df["test_loss"], color="tab:red", label="test")
        loss_ax.set_yscale("log")
        loss_ax.set_ylabel("cross-entropy (nats)")
        loss_ax.set_title("(a) loss", loc="left")
        loss_ax.legend(loc="lower left")
        acc_ax.plot(df["epoch"], df["train_accuracy"], color="tab:blue", label="train")
        acc_ax.plot(df["epoch"], df["test_accuracy"], color="tab:red", label="test")
        acc_ax.set_ylim(-0.02, 1.02)
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_xlabel("epoch (full-batch step)")
        acc_ax.set_title("(b) accuracy", loc="left")
        default = titled("grokking modular addition", run)
        fig.suptitle(f"{title or default}\n{_phase_note(phases)}")
    return fig


def embedding_fourier_figure(
    emb: pd.DataFrame,
    keys: pd.DataFrame,
    source: str = "embedding_fourier",
    title: str | None = None,
) -> Figure:
    """Norm of W_E along cos k / sin k for every frequency; key frequencies highlighted."""
    check_columns(emb, EMBEDDING_COLUMNS, source)
    check_numeric(emb, ["frequency", "norm"], source)
    check_columns(keys, ["frequency"], source)
    model = model_name(emb, source)
    key_set = set(int(k) for k in keys["frequency"])
    parts = emb[emb["component"] != "const"].sort_values(["frequency", "component"])
    with figure_style():
        fig = new_figure(7.2, 3.2)
        ax = fig.add_subplot()
        n_freq = int(parts["frequency"].max())
        for offset, component, color in ((-0.2, "cos", "tab:blue"), (0.2, "sin", "tab:orange")):
            rows = parts[parts["component"] == component]
            ax.bar(
                rows["frequency"] + offset, rows["norm"], width=0.4, color=color, label=component
            )
        for k in sorted(key_set):
            ax.axvspan(k - 0.5, k + 0.5, color="#ffe9a8", zorder=0)
        ax.set_xlim(0.3, n_freq + 0.7)
        ax.set_xlabel("frequency k (w = 2πk/p)")
        ax.set_ylabel("‖component of W_E‖")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(loc="upper right")
        share = float(keys["embedding_share"].sum()) if "embedding_share" in keys else float("nan")
        note = (
            f"key frequencies {sorted(key_set)} carry {share:.0%} of the squared norm"
            if key_set
            else "no key frequencies found"
        )
        fig.suptitle(f"{title or f'{model}: the embedding in the Fourier basis'}\n{note}")
    return fig


def activation_maps_figure(
    maps: pd.DataFrame, source: str = "activation_maps", title: str | None = None
) -> Figure:
    """Heatmaps over (a, b): each head's attention from '=' to a, and one neuron per key frequency."""
    check_columns(maps, MAP_COLUMNS, source)
    check_numeric(maps, ["unit", "frequency", "a", "b", "value"], source)
    model = model_name(maps, source)
    units = maps[["kind", "unit", "frequency"]].drop_duplicates().to_numpy().tolist()
    n_cols = min(4, max(len(units), 1))
    n_rows = max(1, math.ceil(len(units) / n_cols))
    with figure_style():
        fig = new_figure(2.3 * n_cols + 0.4, 2.4 * n_rows + 0.6)
        axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
        for ax in axes[len(units) :]:
            ax.set_axis_off()
        for ax, (kind, unit, frequency) in zip(axes, units, strict=False):
            rows = maps[(maps["kind"] == kind) & (maps["unit"] == unit)]
            p = int(rows["a"].max()) + 1
            k = int(frequency) if 0 < int(frequency) < p else 1
            # Index by k·a mod p: a period-p/k pattern becomes one smooth period (no moiré).
            image = np.full((p, p), np.nan)
            image[(k * rows["a"].to_numpy()) % p, (k * rows["b"].to_numpy()) % p] = rows[
                "value"
            ].to_numpy()
            im = ax.imshow(image, cmap="viridis" if kind == "head" else "magma", origin="lower")
            ax.set_title(f"{kind} {unit} (k={frequency})", fontsize=8)
            axis = "{} mod p" if k == 1 else f"{k}·{{}} mod p"
            ax.set_xlabel(axis.format("b") if k != 1 else "b")
            ax.set_ylabel(axis.format("a") if k != 1 else "a")
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(
            f"{title or f'{model}: activations over all inputs (a, b)'}\n"
            "heads: attention from '=' to a; neurons: ReLU output at '='; "
            "axes in steps of each unit's frequency k"
        )
    return fig


PROGRESS_LINES = (
    ("train_loss", "train loss", "tab:blue", "-"),
    ("test_loss", "test loss", "tab:red", "-"),
    ("restricted_loss", "restricted loss", "tab:green", "--"),
    ("excluded_loss", "excluded loss", "tab:purple", "--"),
)


def progress_measures_figure(
    progress: pd.DataFrame,
    phases: pd.DataFrame,
    source: str = "progress",
    title: str | None = None,
) -> Figure:
    """Restricted and excluded loss beside train/test loss, and the weight norm, across checkpoints."""
    check_columns(progress, PROGRESS_COLUMNS, source)
    check_numeric(progress, ["epoch", "value"], source)
    _check_phases(phases, source)
    model = model_name(progress, source)
    wide = progress.pivot(index="epoch", columns="metric", values="value").sort_index()
    wide = wide[wide.index > 0]
    with figure_style():
        fig = new_figure(6.4, 5.6)
        loss_ax, norm_ax = fig.subplots(2, 1, sharex=True)
        for ax in (loss_ax, norm_ax):
            shade_phases(ax, phases, label=ax is loss_ax)
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        for metric, label, color, style in PROGRESS_LINES:
            if metric in wide:
                loss_ax.plot(wide.index, wide[metric], color=color, linestyle=style, label=label)
        loss_ax.set_yscale("log")
        loss_ax.set_ylabel("cross-entropy (nats)")
        loss_ax.set_title("(a) progress measures", loc="left")
        loss_ax.legend(loc="lower left", ncols=2)
        if "weight_norm" in wide:
            norm_ax.plot(wide.index, wide["weight_norm"], color="black")
        norm_ax.set_ylabel("‖θ‖₂")
        norm_ax.set_xlabel("epoch")
        norm_ax.set_title("(b) total weight norm", loc="left")
        fig.suptitle(f"{title or f'{model}: restricted and excluded loss'}\n{_phase_note(phases)}")
    return fig


# The figures of this experiment, as the generic figure step draws them (plot_<name> rules).
FIGURES = {
    "grokking_curves": FigureKind(
        draw=grokking_curves_figure, tables={"log": "source", "phases": None}
    ),
    "embedding_fourier": FigureKind(
        draw=embedding_fourier_figure, tables={"table": "source", "key_frequencies": None}
    ),
    "activation_maps": FigureKind(draw=activation_maps_figure, tables={"table": "source"}),
    "progress_measures": FigureKind(
        draw=progress_measures_figure, tables={"table": "source", "phases": None}
    ),
}
