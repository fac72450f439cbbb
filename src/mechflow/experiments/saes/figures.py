"""Sparse-autoencoder figures, drawn from tidy tables only.

- ``latent_dashboard_figure``: one row per latent: activation histogram, top-activating
  contexts (token ids, the activating token bracketed) and direct logit effects.
- ``sae_frontier_figure``: the sparsity/fidelity frontier of a sweep: CE loss recovered and
  fraction of variance unexplained against L0, one line per architecture.
- ``toy_recovery_figure``: how well one SAE trained on toy data found the true features.

Each function checks its tables' schema and returns a ``Figure``; ``style.save_figure`` saves it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from mechflow.plots.style import (
    FigureKind,
    check_columns,
    check_numeric,
    figure_style,
    new_figure,
    titled,
)

logger = logging.getLogger(__name__)

CONTEXT_COLUMNS = ("latent", "rank", "activation", "context")
HISTOGRAM_COLUMNS = ("latent", "bin_left", "bin_right", "count", "frequency")
LOGIT_COLUMNS = ("latent", "sign", "rank", "token", "value")
METRIC_COLUMNS = ("sae", "hook", "architecture", "metric", "value")
RECOVERY_COLUMNS = (
    "feature", "importance", "norm", "represented", "max_cosine", "best_latent", "recovered",
)  # fmt: skip

ARCH_STYLE = {  # colour, marker: one look per architecture across figures
    "relu": ("tab:blue", "o"),
    "topk": ("tab:orange", "s"),
    "batchtopk": ("tab:green", "^"),
    "jumprelu": ("tab:red", "D"),
}
_FALLBACK_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
POSITIVE_COLOR, NEGATIVE_COLOR = "#2166ac", "#b2182b"
UNREPRESENTED_COLOR = "#bdbdbd"


# --- latent dashboard -----------------------------------------------------------------------
def _latent_order(*tables: pd.DataFrame) -> list[int]:
    """Latents in the order the summary step wrote them (its selection order)."""
    seen: dict[int, None] = {}
    for table in tables:
        for latent in table["latent"]:
            seen.setdefault(int(latent), None)
    return list(seen)


def latent_dashboard_figure(
    contexts: pd.DataFrame,
    histograms: pd.DataFrame,
    logits: pd.DataFrame,
    source: str = "latent_summary",
    title: str | None = None,
    model: str | None = None,
    hook: str | None = None,
    sae: str | None = None,
) -> Figure:
    """One row per latent: histogram of nonzero activations | top contexts | logit effects.

    The tables do not say which SAE they summarise: ``model``, ``hook`` and ``sae`` name it.
    """
    check_columns(contexts, CONTEXT_COLUMNS, f"{source} (contexts)")
    check_columns(histograms, HISTOGRAM_COLUMNS, f"{source} (histograms)")
    check_columns(logits, LOGIT_COLUMNS, f"{source} (logits)")
    check_numeric(contexts, ["latent", "rank", "activation"], f"{source} (contexts)")
    check_numeric(histograms, list(HISTOGRAM_COLUMNS), f"{source} (histograms)")
    check_numeric(logits, ["latent", "rank", "token", "value"], f"{source} (logits)")
    bad_signs = sorted(set(logits["sign"].astype(str)) - {"positive", "negative"})
    if bad_signs:
        raise ValueError(f"{source} (logits): sign must be positive or negative, got {bad_signs}")
    latents = _latent_order(histograms, contexts, logits)
    if not latents:
        raise ValueError(f"{source}: no latents to show (all three tables are empty)")
    n_lines = max(
        [int((contexts["latent"] == i).sum()) for i in latents]
        + [int((logits["latent"] == i).sum()) for i in latents]
        + [6]
    )
    row_height = max(1.9, 0.15 * n_lines + 0.6)
    with figure_style():
        fig = new_figure(10.0, row_height * len(latents) + 0.6)
        axes = fig.subplots(len(latents), 3, squeeze=False, width_ratios=[1.0, 1.5, 1.1])
        for (hist_ax, text_ax, logit_ax), latent in zip(axes, latents, strict=True):
            _histogram_panel(hist_ax, histograms[histograms["latent"] == latent], latent)
            _context_panel(text_ax, contexts[contexts["latent"] == latent])
            _logit_panel(logit_ax, logits[logits["latent"] == latent])
        what = f"SAE {sae} latents" if sae else "SAE latents"
        default = titled(f"{what} — activations, top contexts, direct logit effects", model, hook)
        fig.suptitle(title or default)
    return fig


def _histogram_panel(ax, rows: pd.DataFrame, latent: int) -> None:
    rows = rows.sort_values("bin_left")
    freq = float(rows["frequency"].max()) if len(rows) else 0.0
    total = int(rows["count"].sum())
    widths = (rows["bin_right"] - rows["bin_left"]).to_numpy()
    if total == 0:
        ax.text(0.5, 0.5, "never fires", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.bar(
            rows["bin_left"],
            rows["count"],
            width=np.where(widths > 0, widths, 1e-3),
            align="edge",
            color="tab:gray",
            edgecolor="none",
        )
    ax.set_title(f"latent {latent}: fires on {freq:.2%}", loc="left")
    ax.set_xlabel("activation (nonzero)")
    ax.set_ylabel("tokens")
    ax.grid(alpha=0.3, axis="y")


def _context_panel(ax, rows: pd.DataFrame) -> None:
    ax.set_axis_off()
    as_text = rows["context"].astype(str).str.contains("«").any()
    what = "text, «activating token»" if as_text else "token ids, [activating token]"
    ax.set_title(f"top activations: {what}", loc="left")
    rows = rows.sort_values("rank")
    if rows.empty:
        ax.text(0.0, 0.9, "no activations", transform=ax.transAxes, va="top")
        return
    n = max(len(rows), 6)
    for line, row in enumerate(rows.itertuples()):
        ax.text(
            0.0,
            1.0 - (line + 0.5) / n,
            f"{row.activation:8.3f}   {row.context}",
            transform=ax.transAxes,
            va="center",
            ha="left",
            family="monospace",
            fontsize=7,
        )


def _logit_panel(ax, rows: pd.DataFrame) -> None:
    pos = rows[rows["sign"] == "positive"].sort_values("rank")
    neg = rows[rows["sign"] == "negative"].sort_values("rank", ascending=False)
    shown = pd.concat([pos, neg])  # largest at the top, most negative at the bottom
    y = np.arange(len(shown))[::-1]
    colors = [POSITIVE_COLOR if v >= 0 else NEGATIVE_COLOR for v in shown["value"]]
    ax.barh(y, shown["value"], color=colors)
    labels = (
        shown["text"].astype(str) if "text" in shown else shown["token"].astype(int).astype(str)
    )
    as_ids = labels.eq(shown["token"].astype(int).astype(str)).all()
    ax.set_yticks(y, labels if as_ids else [repr(t) for t in labels], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_ylabel("token id" if as_ids else "token")
    ax.set_xlabel("W_dec · W_U")
    ax.set_title("direct logit effect", loc="left")
    ax.grid(alpha=0.3, axis="x")


# --- sweep frontier -------------------------------------------------------------------------
def _wide_metrics(metrics: pd.DataFrame, source: str) -> pd.DataFrame:
    check_columns(metrics, METRIC_COLUMNS, source)
    check_numeric(metrics, ["value"], source)
    keys = ["sae", "hook", "metric"]
    dupes = metrics.duplicated(subset=keys, keep=False)
    if dupes.any():
        example = metrics.loc[dupes, keys].iloc[0].to_dict()
        raise ValueError(f"{source}: more than one row for {example}")
    if "l0" not in set(metrics["metric"]):
        raise ValueError(f"{source}: no 'l0' metric rows; the frontier is plotted against L0")
    wide = metrics.pivot(index=["sae", "hook", "architecture"], columns="metric", values="value")
    return wide.reset_index()


def _arch_style(arch: str, index: int) -> tuple[str, str]:
    return ARCH_STYLE.get(arch, (_FALLBACK_COLORS[index % len(_FALLBACK_COLORS)], "v"))


def sae_frontier_figure(
    metrics: pd.DataFrame,
    source: str = "sae_metrics",
    title: str | None = None,
    model: str | None = None,
) -> Figure:
    """CE loss recovered (a) and FVU (b) against L0 (log), one line per architecture; ``model``
    names the model whose hook the SAEs read (the metrics table names only the hook)."""
    wide = _wide_metrics(metrics, source)
    bad = wide["l0"].isna() | (wide["l0"] <= 0)
    if bad.any():
        logger.warning(
            "%s: %d SAE(s) without a positive L0 left out (log axis): %s",
            source, int(bad.sum()), sorted(wide.loc[bad, "sae"]),
        )  # fmt: skip
        wide = wide[~bad]
    hooks = sorted(wide["hook"].astype(str).unique())
    known = [a for a in ARCH_STYLE if a in set(wide["architecture"])]
    archs = known + sorted(set(wide["architecture"].astype(str)) - set(known))
    panels = (
        ("ce_recovered_zero", "CE loss recovered (zero ablation)", "(a) downstream loss"),
        ("fvu", "fraction of variance unexplained", "(b) reconstruction"),
    )
    with figure_style():
        fig = new_figure(8.4, 3.4)
        axes = fig.subplots(1, 2)
        for ax, (metric, ylabel, panel_title) in zip(axes, panels, strict=True):
            drawn = 0
            for a, arch in enumerate(archs):
                color, marker = _arch_style(arch, a)
                for h, hook in enumerate(hooks):
                    rows = wide[(wide["architecture"] == arch) & (wide["hook"] == hook)]
                    if metric not in rows:
                        continue
                    rows = rows.dropna(subset=[metric]).sort_values("l0")
                    if rows.empty:
                        continue
                    label = arch if len(hooks) == 1 else f"{arch} ({hook})"
                    ax.plot(
                        rows["l0"],
                        rows[metric],
                        color=color,
                        marker=marker,
                        linestyle=("-", "--", ":", "-.")[h % 4],
                        markersize=4,
                        label=label,
                    )
                    drawn += 1
            if metric == "ce_recovered_zero":
                ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
            if not drawn:
                ax.text(0.5, 0.5, f"no {metric} values", ha="center", transform=ax.transAxes)
            ax.set_xscale("log")
            # 2, 5, 10, 20 rather than 2×10⁰: L0 spans one or two decades
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("L0 (active latents per token)")
            ax.set_ylabel(ylabel)
            ax.set_title(panel_title, loc="left")
            ax.grid(alpha=0.3, which="both")
        handles, labels = axes[0].get_legend_handles_labels()
        if not handles:
            handles, labels = axes[1].get_legend_handles_labels()
        if handles:
            axes[1].legend(handles, labels, loc="best")
        where = hooks[0] if len(hooks) == 1 else f"{len(hooks)} hooks"
        what = f"SAE sparsity–fidelity frontier ({where}, {len(wide)} SAEs)"
        fig.suptitle(title or titled(what, model))
    return fig


# --- toy feature recovery -------------------------------------------------------------------
def _as_bool(series: pd.Series, source: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=bool)
    text = series.astype(str).str.strip().str.lower()
    mapping = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
    unknown = sorted(set(text) - set(mapping))
    if unknown:
        raise ValueError(f"{source}: column 'represented' must be boolean, got {unknown}")
    return text.map(mapping).to_numpy(dtype=bool)


def toy_recovery_figure(
    recovery: pd.DataFrame,
    source: str = "recovery",
    title: str | None = None,
    model: str | None = None,
    threshold: float | None = None,
) -> Figure:
    """Max cosine of each true feature with any decoder row; unrepresented features greyed.

    The SAE is named by the table's ``sae`` column, the toy model (not in the table) by ``model``.
    Which features count as recovered is the table's ``recovered`` column (decided by the step
    with the configured threshold); ``threshold`` only draws that line.
    """
    check_columns(recovery, RECOVERY_COLUMNS, source)
    check_numeric(recovery, ["feature", "importance", "norm", "max_cosine"], source)
    if recovery.empty:
        raise ValueError(f"{source}: no features")
    if recovery["feature"].duplicated().any():
        raise ValueError(f"{source}: more than one row for a feature (one SAE per table)")
    saes = sorted(recovery["sae"].astype(str).unique()) if "sae" in recovery else []
    if len(saes) > 1:
        raise ValueError(f"{source}: expected rows of one SAE, found {saes}")
    df = recovery.sort_values("feature").reset_index(drop=True)
    represented = _as_bool(df["represented"], source)
    cosine = df["max_cosine"].to_numpy(dtype=float)
    found = represented & _as_bool(df["recovered"], source)
    n_rep = int(represented.sum())
    bound = f", max cosine ≥ {threshold:g}" if threshold is not None else ""
    note = (
        f"{int(found.sum())}/{n_rep} represented features recovered "
        f"({found.sum() / n_rep:.0%}{bound})"
        if n_rep
        else "no feature is represented by the toy model"
    )
    x = np.arange(len(df))
    with figure_style():
        fig = new_figure(max(4.8, 0.22 * len(df) + 1.6), 3.2)
        ax = fig.add_subplot()
        ax.bar(
            x,
            cosine,
            color=np.where(represented, "tab:blue", UNREPRESENTED_COLOR),
            edgecolor=np.where(found, "black", "none"),
            linewidth=0.6,
        )
        if threshold is not None:
            ax.axhline(threshold, color="black", linestyle="--", linewidth=0.8)
        step = max(1, len(df) // 20)
        ax.set_xticks(x[::step], [str(int(f)) for f in df["feature"][::step]])
        ax.set_xlim(-0.6, len(df) - 0.4)
        ax.set_ylim(min(0.0, float(np.nanmin(cosine)) - 0.05), 1.05)
        ax.set_xlabel("true feature")
        ax.set_ylabel("max cosine with a decoder row")
        ax.grid(alpha=0.3, axis="y")
        fig.legend(
            handles=[
                Patch(color="tab:blue", label="represented by the toy model"),
                Patch(color=UNREPRESENTED_COLOR, label="not represented"),
                Patch(
                    facecolor="white",
                    edgecolor="black",
                    label=f"recovered{bound.replace(', max cosine', '')}",
                ),
            ],
            loc="outside lower center",
            ncols=3,
            fontsize=7,
        )
        what = f"feature recovery by SAE {saes[0]}" if saes else "feature recovery by the SAE"
        fig.suptitle(f"{title or titled(what, model)}\n{note}")
    return fig


# The figures of this experiment, as the generic figure step draws them (plot_<name> rules).
FIGURES = {
    "sae_frontier": FigureKind(
        draw=sae_frontier_figure, tables={"metrics": "source"}, options={"model": str}
    ),
    "latent_dashboard": FigureKind(
        draw=latent_dashboard_figure,
        tables={"contexts": "source", "histograms": None, "logits": None},
        options={"model": str, "hook": str, "sae": str},
    ),
    "toy_recovery": FigureKind(
        draw=toy_recovery_figure,
        tables={"table": "source"},
        options={"model": str, "threshold": float},
    ),
}
