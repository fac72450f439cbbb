"""Shared matplotlib setup: headless backend, one look for every figure, reproducible files.

Figures are built on ``matplotlib.figure.Figure`` directly (never pyplot) so no global figure
registry grows inside long-lived processes, and files are byte-identical across reruns: no
timestamps or software strings in the metadata and a fixed SVG id salt.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from mechflow.artifacts import atomic_path, read_table

logger = logging.getLogger(__name__)

DPI = 150
PANEL_WIDTH = 3.6  # inches per heatmap panel at the reference size (~4-12 columns)
PANEL_HEIGHT = 2.8
MAX_ANNOTATED_CELLS = 400  # beyond this the numbers are unreadable; the colour still tells

RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "figure.titlesize": 11,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.interpolation": "nearest",
    "svg.hashsalt": "mechflow",  # stable element ids -> identical SVG bytes on rerun
    "svg.fonttype": "path",  # text as outlines: renders the same without our fonts installed
}

PNG_METADATA = {"Software": None}
SVG_METADATA = {"Date": None, "Creator": None}


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """rcParams are read when artists are made, so wrap the whole figure construction."""
    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def svg_path(out_png: str | os.PathLike) -> Path:
    """The vector copy lives beside the PNG: same stem, ``.svg``."""
    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise ValueError(f"figure output must end in .png, got {out_png}")
    return out_png.with_suffix(".svg")


def add_figure_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every plot step shares: the PNG to write (SVG beside it) and a title override."""
    parser.add_argument("--out", required=True, type=Path, help="figure .png (SVG written beside)")
    parser.add_argument("--title", default=None, help="replaces the default title")


def read_figure_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a tidy table, turning pandas' errors into ones that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {path} does not exist")
    try:
        return read_table(path)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{path}: empty file (not even a header row)") from err


def save_figure(fig: Figure, out_png: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_png`` and the vector copy beside it; neither appears unless both were drawn."""
    out_png = Path(out_png)
    out_svg = svg_path(out_png)
    # The PNG (the declared Snakemake output) is renamed last: it exists only if the SVG does.
    with (
        matplotlib.rc_context(RC),
        atomic_path(out_png) as tmp_png,
        atomic_path(out_svg) as tmp_svg,
    ):
        fig.savefig(tmp_svg, format="svg", metadata=SVG_METADATA)
        fig.savefig(tmp_png, format="png", dpi=DPI, metadata=PNG_METADATA)
    logger.info("wrote %s and %s", out_png, out_svg)
    return out_png, out_svg


def check_columns(df: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Fail on a table that another step wrote with a different schema, naming file and column."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"expected {list(columns)}, found {list(df.columns)}"
        )


def check_numeric(df: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    for column in columns:
        if not pd.api.types.is_numeric_dtype(df[column]):
            raise ValueError(f"{source}: column {column!r} must be numeric, got {df[column].dtype}")


def check_table(
    df: pd.DataFrame,
    columns: Sequence[str],
    numeric: Sequence[str],
    source: str,
    *,
    empty_ok: bool = False,
) -> bool:
    """A figure's schema checks before any drawing: the columns, some rows, ``numeric`` numeric.
    False for a table without rows, which only ``empty_ok`` allows (a placeholder figure)."""
    check_columns(df, columns, source)
    if df.empty:
        if not empty_ok:
            raise ValueError(f"{source}: table has no rows")
        return False
    check_numeric(df, numeric, source)
    return True


def model_name(df: pd.DataFrame, source: str) -> str:
    """The one model a table describes; figures compare heads, not models."""
    models = sorted(df["model"].astype(str).unique())
    if len(models) != 1:
        raise ValueError(f"{source}: expected rows of exactly one model, found {models}")
    return models[0]


def grid(
    df: pd.DataFrame,
    rows: str | list[str],
    cols: str | list[str],
    value: str,
    source: str,
    row_order: Sequence | None = None,
    col_order: Sequence | None = None,
) -> pd.DataFrame:
    """Long table -> matrix; duplicate cells are an upstream bug, so they are not averaged away."""
    keys = ([rows] if isinstance(rows, str) else rows) + ([cols] if isinstance(cols, str) else cols)
    dupes = df.duplicated(subset=keys, keep=False)
    if dupes.any():
        example = df.loc[dupes, keys].iloc[0].to_dict()
        raise ValueError(f"{source}: more than one row for {example}")
    matrix = df.pivot_table(index=rows, columns=cols, values=value, aggfunc="first", dropna=False)
    if row_order is not None:
        matrix = matrix.reindex(index=row_order)
    if col_order is not None:
        matrix = matrix.reindex(columns=col_order)
    return matrix


def annotate_cells(
    ax: Axes,
    values: np.ndarray,
    cmap,
    norm: Normalize,
    fmt: str = "{:.2f}",
    bold: np.ndarray | None = None,
) -> None:
    """Write each cell's value in a colour that stays legible on that cell's background."""
    n_rows, n_cols = values.shape
    if values.size > MAX_ANNOTATED_CELLS:
        logger.info("%d cells: too many to annotate, colour only", values.size)
        return
    fontsize = 8 if max(n_rows, n_cols) <= 8 else 6 if max(n_rows, n_cols) <= 14 else 5
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            if not np.isfinite(v):
                continue
            r, g, b, _ = cmap(norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(
                j,
                i,
                fmt.format(v).replace("-", "\N{MINUS SIGN}"),  # match the colorbar's minus
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if dark else "black",
                fontweight="bold" if bold is not None and bold[i, j] else "normal",
            )


def titled(what: str, *names: str | None) -> str:
    """A default title that names what the figure shows: ``"<names>: <what>"`` (the model, run,
    hook or SAE); names that are None, for a figure drawn without them, are left out."""
    shown = [str(name) for name in names if name]
    return f"{' '.join(shown)}: {what}" if shown else what


def placeholder_figure(message: str, title: str) -> Figure:
    """A figure that says why there is nothing to plot, so the workflow still has its output."""
    with figure_style():
        fig = new_figure(PANEL_WIDTH * 1.5, PANEL_HEIGHT)
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, transform=ax.transAxes)
        fig.suptitle(title)
    return fig


@dataclass(frozen=True, kw_only=True)
class FigureKind:
    """How the generic figure step (``mechflow.steps.plot_figure``) calls one figure function.

    Args:
        draw: the figure function; it takes the tables positionally, in the order of ``tables``.
        tables: table name (``--table NAME=PATH``) -> the keyword through which ``draw`` names
            that table's file in its errors (None: it names none). A table given several files
            is their concatenation.
        options: option name -> its type, passed to ``draw`` as keywords (from ``--option``).
    """

    draw: Callable[..., Figure]
    tables: Mapping[str, str | None]
    options: Mapping[str, type] = field(default_factory=dict)
