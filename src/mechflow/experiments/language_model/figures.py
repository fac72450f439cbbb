"""Language-model figures, drawn from tidy tables only.

- ``loss_curve_figure``: training and validation loss over steps, with the uniform, unigram and
  bigram baselines as lines, so the curve is read against what frequencies alone buy.
- ``logit_lens_figure``: per layer, the lens's loss and its KL to the final distribution.
- ``logit_attribution_figure``: the direct logit attribution of every head (layer x head) and
  of the other components (embeddings, MLPs, biases) to the correct next token.

Each function checks its tables' schema and returns a ``Figure``; ``style.save_figure`` saves it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mechflow.plots.style import (
    FigureKind,
    check_columns,
    check_numeric,
    figure_style,
    new_figure,
    titled,
)

LOG_COLUMNS = ("step", "loss")
LOSS_COLUMNS = ("name", "kind", "loss")
LENS_COLUMNS = ("layer", "loss", "kl_to_final", "top1_agreement")
ATTRIBUTION_COLUMNS = ("component", "kind", "layer", "head", "mean")
BASELINE_STYLE = {"uniform": ":", "unigram": "--", "bigram": "-."}


def loss_curve_figure(
    log: pd.DataFrame,
    losses: pd.DataFrame,
    source: str = "train_log",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """Training loss (and validation loss, where logged) against step, baselines as lines."""
    check_columns(log, LOG_COLUMNS, source)
    check_numeric(log, list(LOG_COLUMNS), source)
    check_columns(losses, LOSS_COLUMNS, "losses")
    baselines = losses[losses["kind"] == "baseline"]
    with figure_style():
        fig = new_figure(7.0, 4.2)
        ax = fig.add_subplot()
        ax.plot(log["step"], log["loss"], color="tab:blue", lw=1, alpha=0.8, label="train")
        if "val_loss" in log:
            val = log.dropna(subset=["val_loss"])
            ax.plot(
                val["step"], val["val_loss"], "o-", color="tab:orange", ms=3, label="validation"
            )
        for row in baselines.itertuples():
            ax.axhline(
                row.loss,
                color="tab:gray",
                ls=BASELINE_STYLE.get(row.name, "-"),
                lw=1,
                label=f"{row.name} baseline ({row.loss:.2f})",
            )
        final = losses[losses["kind"] == "model"]
        if len(final):
            ax.set_title(f"final validation loss {float(final['loss'].iloc[0]):.3f}", loc="left")
        top = max(float(baselines["loss"].max()) if len(baselines) else 0, 0) * 1.05
        ax.set_ylim(0, top or None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(title or titled("loss against uniform, unigram and bigram baselines", model))
    return fig


def logit_lens_figure(
    table: pd.DataFrame,
    source: str = "logit_lens",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """Per layer boundary: the lens's next-token loss, and its KL to the final distribution."""
    check_columns(table, LENS_COLUMNS, source)
    check_numeric(table, list(LENS_COLUMNS), source)
    table = table.sort_values("layer")
    with figure_style():
        fig = new_figure(10.0, 3.6)
        loss_ax, kl_ax, agree_ax = fig.subplots(1, 3)
        for ax, column, label in (
            (loss_ax, "loss", "next-token loss (nats)"),
            (kl_ax, "kl_to_final", "KL(final || lens) (nats)"),
            (agree_ax, "top1_agreement", "top-1 agrees with final"),
        ):
            ax.plot(table["layer"], table[column], "o-", color="tab:blue")
            ax.set_xlabel("layer (0: embeddings)")
            ax.set_ylabel(label)
            ax.set_xticks(table["layer"])
            ax.grid(alpha=0.3)
        agree_ax.set_ylim(0, 1.02)
        fig.suptitle(title or titled("logit lens (final LayerNorm recomputed per layer)", model))
    return fig


def logit_attribution_figure(
    table: pd.DataFrame,
    source: str = "logit_attribution",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """Heads as a layer x head heatmap; every other component as a bar."""
    check_columns(table, ATTRIBUTION_COLUMNS, source)
    check_numeric(table, ["layer", "head", "mean"], source)
    heads = table[table["kind"] == "head"]
    others = table[table["kind"] != "head"]
    with figure_style():
        fig = new_figure(11.0, 4.2)
        heat_ax, bar_ax = fig.subplots(1, 2, width_ratios=[1.0, 1.3])
        if len(heads):
            n_layers = int(heads["layer"].max()) + 1
            n_heads = int(heads["head"].max()) + 1
            grid = np.full((n_layers, n_heads), np.nan)
            grid[heads["layer"].astype(int), heads["head"].astype(int)] = heads["mean"]
            bound = float(np.nanmax(np.abs(grid))) or 1.0
            image = heat_ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
            heat_ax.set_xticks(range(n_heads))
            heat_ax.set_yticks(range(n_layers))
            fig.colorbar(image, ax=heat_ax, label="mean logit of the next token")
        heat_ax.set_xlabel("head")
        heat_ax.set_ylabel("layer")
        heat_ax.set_title("heads", loc="left")
        colors = np.where(others["mean"] >= 0, "#2166ac", "#b2182b")
        bar_ax.barh(range(len(others)), others["mean"], color=colors)
        bar_ax.set_yticks(range(len(others)), others["component"], fontsize=8)
        bar_ax.invert_yaxis()
        bar_ax.axvline(0, color="black", lw=0.8)
        bar_ax.set_xlabel("mean logit of the next token")
        bar_ax.set_title("embeddings, MLPs and biases", loc="left")
        bar_ax.grid(alpha=0.3, axis="x")
        fig.suptitle(title or titled("direct logit attribution to the correct next token", model))
    return fig


FIGURES = {
    "loss_curve": FigureKind(
        draw=loss_curve_figure, tables={"log": "source", "losses": None}, options={"model": str}
    ),
    "logit_lens": FigureKind(
        draw=logit_lens_figure, tables={"table": "source"}, options={"model": str}
    ),
    "logit_attribution": FigureKind(
        draw=logit_attribution_figure, tables={"table": "source"}, options={"model": str}
    ),
}
