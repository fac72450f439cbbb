"""The Toy Models of Superposition figures (Elhage et al. 2022), drawn from tidy tables only.

- ``superposition_figure``: per feature probability, WᵀW and the bias b as heatmaps, and ‖W_i‖
  as bars coloured by how much other features project onto feature i (black: none).
- ``dimensionality_figure``: dimensions per feature m/‖W‖_F² and each feature's dimensionality
  D_i against 1/(1-S), with the sticky fractions of the paper's geometries marked.
- ``phase_figure``: the n = 2, m = 1 phase diagram over relative importance x feature density.

Each function checks its tables' schema and returns a ``Figure``; ``style.save_figure`` saves it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fractions import Fraction

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, LinearSegmentedColormap, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mechflow.plots.style import (
    FigureKind,
    check_table,
    figure_style,
    grid,
    model_name,
    new_figure,
)

logger = logging.getLogger(__name__)

WTW_COLUMNS = ("model", "instance", "i", "j", "value")
FEATURE_COLUMNS = (
    "model",
    "instance",
    "feature_probability",
    "feature",
    "bias",
    "norm",
    "superposition",
    "dimensionality",
    "represented",
)
INSTANCE_COLUMNS = ("model", "instance", "feature_probability", "dims_per_feature")
PHASE_COLUMNS = ("feature_probability", "relative_importance", "phase")

STICKY_FRACTIONS = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8)  # tetrahedron 3/4 ... antiprism 3/8
PHASE_COLORS = {
    "not represented": "#4c72b0",
    "dedicated dimension": "#c44e52",
    "superposition": "#e8b53a",
    "unclassified": "#bdbdbd",
}
BLOCKS_PER_ROW = 4
BLOCK_WIDTH, BLOCK_HEIGHT = 3.4, 2.6  # inches per instance in the superposition figure
_SUPERPOSITION_LABEL = r"bar colour: $\sum_{j\neq i}(\hat{W}_i\cdot W_j)^2$"

_DIVERGING = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#e0e0e0")
# black = the feature has its own direction, yellow = other features project onto it
_SUPERPOSITION = LinearSegmentedColormap.from_list("superposition", ["black", "#ffd21f"])


def _density_label(p: float) -> str:
    return f"1−S = {p:.3g}"


def _instances(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """instance -> its one feature probability, sorted by instance."""
    per = df.groupby("instance")["feature_probability"].agg(["min", "max"])
    bad = per.index[~np.isclose(per["min"], per["max"])]
    if len(bad):
        raise ValueError(f"{source}: instance {int(bad[0])} has more than one feature_probability")
    return per["min"].rename("feature_probability").sort_index()


def _prepare(df: pd.DataFrame, columns: Sequence[str], numeric: Sequence[str], source: str) -> str:
    check_table(df, columns, numeric, source)
    if "represented" in columns and not pd.api.types.is_bool_dtype(df["represented"]):
        raise ValueError(f"{source}: column 'represented' must be True/False")
    return model_name(df, source)


def superposition_figure(
    wtw: pd.DataFrame,
    features: pd.DataFrame,
    title: str | None = None,
    wtw_source: str = "wtw table",
    features_source: str = "features table",
) -> Figure:
    """Per instance: WᵀW | b heatmaps and ‖W_i‖ bars coloured by superposition."""
    model = _prepare(wtw, WTW_COLUMNS, ("instance", "i", "j", "value"), wtw_source)
    numeric = ("instance", "feature_probability", "feature", "bias", "norm", "superposition")
    other = _prepare(features, FEATURE_COLUMNS, numeric, features_source)
    if other != model:
        raise ValueError(f"{wtw_source} is model {model!r} but {features_source} is {other!r}")
    probs = _instances(features, features_source)
    missing = sorted(set(wtw["instance"]) ^ set(probs.index))
    if missing:
        raise ValueError(
            f"{wtw_source} and {features_source} disagree on instances (e.g. {missing[0]})"
        )
    n_features = int(features["feature"].max()) + 1
    index = range(n_features)
    n_blocks = len(probs)
    per_row = min(n_blocks, BLOCKS_PER_ROW)
    rows = math.ceil(n_blocks / per_row)
    norm = Normalize(-1.0, 1.0)
    sup_norm = Normalize(0.0, 1.0)
    top = max(1.0, float(features["norm"].max()))
    width, height = BLOCK_WIDTH * per_row + 2.4, BLOCK_HEIGHT * rows + 0.8
    with figure_style():
        # Fixed margins instead of constrained layout, which re-measures every tick label of
        # every panel (seconds for a dozen instances); the gaps are sized for the labels.
        fig = new_figure(width, height)
        fig.set_layout_engine("none")
        spec = fig.add_gridspec(
            rows,
            4 * per_row - 1,
            width_ratios=([1.0, 0.12, 0.8, 0.45] * per_row)[:-1],  # WᵀW | b | ‖W_i‖ | gap
            left=0.55 / width,
            right=1 - 1.9 / width,
            bottom=0.5 / height,
            top=1 - 0.75 / height,
            wspace=0.08,
            hspace=0.55,
        )
        for k, (instance, p) in enumerate(probs.items()):
            r, c = divmod(k, per_row)
            ax_w = fig.add_subplot(spec[r, 4 * c])
            ax_b = fig.add_subplot(spec[r, 4 * c + 1])
            ax_n = fig.add_subplot(spec[r, 4 * c + 2])
            matrix = grid(
                wtw[wtw["instance"] == instance], "i", "j", "value", wtw_source, index, index
            )
            rows_f = features[features["instance"] == instance]
            feat = grid(rows_f, "feature", "instance", "bias", features_source, index)
            image = ax_w.imshow(matrix.to_numpy(float), cmap=_DIVERGING, norm=norm, aspect="auto")
            ax_b.imshow(feat.to_numpy(float), cmap=_DIVERGING, norm=norm, aspect="auto")
            ax_w.set_title(f"WᵀW  ({_density_label(p)})", fontsize=9)
            ax_b.set_title("b", fontsize=9)
            ax_w.set_ylabel("feature")
            for ax in (ax_w, ax_b):
                ax.tick_params(length=0, labelsize=6)
                for side in ("top", "right", "bottom", "left"):
                    ax.spines[side].set_visible(False)
            ax_b.set_xticks([])
            ax_b.set_yticks([])
            ticks = list(index)[:: math.ceil(n_features / 5)]  # few labels: text layout is slow
            ax_w.set_xticks(ticks)
            ax_w.set_yticks(ticks)
            by_feature = rows_f.set_index("feature").reindex(index)
            colors = _SUPERPOSITION(sup_norm(by_feature["superposition"].fillna(0).to_numpy()))
            ax_n.barh(
                list(index), by_feature["norm"].fillna(0).to_numpy(), color=colors, height=0.8
            )
            ax_n.set_ylim(n_features - 0.5, -0.5)
            ax_n.set_xlim(0, top * 1.05)
            ax_n.set_yticks([])
            ax_n.set_xlabel("‖Wᵢ‖")
            ax_n.tick_params(labelsize=6)
            n_rep = int(by_feature["represented"].eq(True).sum())
            ax_n.set_title(f"{n_rep}/{n_features} represented", fontsize=8)
        bar_height = min(0.7, 1.9 / height)
        bottom = 0.5 - bar_height / 2
        for offset, mappable, label in (
            (1.75, image, "$W^TW$, $b$"),
            (0.8, ScalarMappable(norm=sup_norm, cmap=_SUPERPOSITION), _SUPERPOSITION_LABEL),
        ):
            cax = fig.add_axes((1 - offset / width, bottom, 0.12 / width, bar_height))
            fig.colorbar(mappable, cax=cax).set_label(label)
        fig.suptitle(title or f"{model}: superposition vs sparsity ({n_features} features)")
    return fig


def _fraction_label(value: float) -> str:
    frac = Fraction(value).limit_denominator(8)
    return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"


def dimensionality_figure(
    features: pd.DataFrame,
    instances: pd.DataFrame,
    title: str | None = None,
    features_source: str = "features table",
    instances_source: str = "instances table",
) -> Figure:
    """(a) m/‖W‖_F² and D_i vs 1/(1-S), sticky fractions marked; (b) features represented."""
    numeric = ("instance", "feature_probability", "norm", "dimensionality")
    model = _prepare(features, FEATURE_COLUMNS, numeric, features_source)
    other = _prepare(
        instances,
        INSTANCE_COLUMNS,
        ("instance", "feature_probability", "dims_per_feature"),
        instances_source,
    )
    if other != model:
        raise ValueError(
            f"{features_source} is model {model!r} but {instances_source} is {other!r}"
        )
    if instances["instance"].duplicated().any():
        raise ValueError(f"{instances_source}: more than one row for an instance")
    probs = _instances(features, features_source)
    inst = instances.sort_values("feature_probability", ascending=False)
    x_inst = 1.0 / inst["feature_probability"].to_numpy(float)
    represented = features["represented"]
    with figure_style():
        fig = new_figure(6.4, 6.0)
        ax, ax_rep = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
        previous = math.inf
        for value in STICKY_FRACTIONS:
            ax.axhline(value, color="grey", linestyle=":", linewidth=0.9, zorder=0)
            crowded = previous - value < 0.05  # 2/5 and 3/8: put the second label beside
            previous = math.inf if crowded else value
            ax.annotate(
                _fraction_label(value),
                (1.0, value),
                xycoords=("axes fraction", "data"),
                xytext=(17 if crowded else 3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color="dimgrey",
            )
        shown = features[represented]
        ax.scatter(
            1.0 / shown["feature_probability"].to_numpy(float),
            shown["dimensionality"],
            s=9,
            color="tab:blue",
            alpha=0.35,
            linewidths=0,
            label="$D_i$ of each represented feature",
        )
        ax.plot(
            x_inst,
            inst["dims_per_feature"],
            color="black",
            marker="o",
            markersize=3,
            linewidth=1.4,
            label=r"dimensions per feature $m/\|W\|_F^2$",
        )
        ax.set_xscale("log")
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("dimensions per feature")
        ax.set_title("(a) feature dimensionality", loc="left")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.2)
        fraction = represented.groupby(features["instance"]).mean().reindex(probs.index)
        ax_rep.plot(
            1.0 / probs.to_numpy(float),
            fraction.to_numpy(float),
            color="tab:green",
            marker="o",
            markersize=3,
        )
        ax_rep.set_ylim(0, 1.05)
        ax_rep.set_ylabel("fraction represented")
        ax_rep.set_xlabel("1 / (1 − S)  (inverse feature density)")
        ax_rep.set_title("(b) features represented (norm above the analysis threshold)", loc="left")
        ax_rep.grid(alpha=0.2)
        fig.suptitle(title or f"{model}: dimensionality vs sparsity")
    return fig


def phase_figure(
    df: pd.DataFrame, title: str | None = None, source: str = "phases table"
) -> Figure:
    """What the extra feature gets, per (relative importance, feature density) cell."""
    check_table(df, PHASE_COLUMNS, ("feature_probability", "relative_importance"), source)
    phases = df["phase"].astype(str)
    unknown = sorted(set(phases) - set(PHASE_COLORS))
    if unknown:
        raise ValueError(f"{source}: column 'phase' has {unknown}; expected {list(PHASE_COLORS)}")
    names = list(PHASE_COLORS)
    codes = df.assign(code=phases.map(names.index).astype(float))
    densities = sorted(codes["feature_probability"].unique(), reverse=True)  # sparser to the right
    importances = sorted(codes["relative_importance"].unique())
    matrix = grid(
        codes, "relative_importance", "feature_probability", "code", source, importances, densities
    )
    cmap = ListedColormap(list(PHASE_COLORS.values())).with_extremes(bad="white")
    norm = BoundaryNorm(np.arange(len(names) + 1) - 0.5, cmap.N)
    with figure_style():
        fig = new_figure(6.4, 4.8)
        ax = fig.add_subplot()
        ax.imshow(matrix.to_numpy(float), cmap=cmap, norm=norm, origin="lower", aspect="auto")
        ax.set_xticks(range(len(densities)), [f"{d:.2g}" for d in densities])
        ax.set_yticks(range(len(importances)), [f"{v:.2g}" for v in importances])
        ax.set_xlabel("feature density 1 − S  (sparser →)")
        ax.set_ylabel("relative importance of feature 2")
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
        ax.tick_params(length=0)
        present = [name for name in names if (phases == name).any()]
        ax.legend(
            handles=[Patch(color=PHASE_COLORS[name], label=name) for name in present],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            title="extra feature",
        )
        fig.suptitle(title or "n = 2, m = 1: superposition as a phase change")
    return fig


# The figures of this experiment, as the generic figure step draws them (plot_<name> rules).
FIGURES = {
    "superposition": FigureKind(
        draw=superposition_figure, tables={"wtw": "wtw_source", "features": "features_source"}
    ),
    "dimensionality": FigureKind(
        draw=dimensionality_figure,
        tables={"features": "features_source", "instances": "instances_source"},
    ),
    "superposition_phases": FigureKind(draw=phase_figure, tables={"table": "source"}),
}
