"""Render a result table as a small HTML page, so the Snakemake report shows its numbers.

The report (Snakemake 9) shows an HTML result inline but offers a CSV only as a download, so
every experiment's headline table goes through this one step. ``--table`` files (several are
concatenated, e.g. a sweep's metrics) are optionally pivoted from long to wide (``--index``,
``--pivot``, ``--values``: one row per index, one column per value of ``--pivot``, in the order
they first appear), cut to the ``--show`` columns, and with ``--mark-above`` every number above
the threshold is marked and named in a last column. Numbers are written to 4 significant
digits, whole numbers in full.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path

import pandas as pd

from mechflow.artifacts import atomic_path
from mechflow.plots.style import check_columns, read_figure_table
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)

MISSING = "–"  # a cell the table has no value for (NaN, or a pivot cell never written)

STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; color: #1f2933; background: #fff;
       margin: 1em; }
h1 { font-size: 16px; margin: 0 0 0.6em; }
table { border-collapse: collapse; }
th, td { padding: 3px 10px; border-bottom: 1px solid #dde2e8; }
th { text-align: left; background: #eef1f5; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.mark { font-weight: bold; background: #fde2e1; }
tbody tr:hover { background: #f6f8fa; }
td.text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; }
p.note { color: #616e7c; font-size: 12px; }
""".strip()


def format_value(value) -> str:
    """How a cell is written: numbers to 4 significant digits (whole numbers, such as epochs or
    token counts, in full), booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if (value.is_integer() and abs(value) < 1e15) or abs(value) >= 1e4:
            return f"{value:.0f}"
        return f"{value:.4g}"
    return MISSING if value is None else str(value)


def _cell_value(value):
    """A pandas cell as a plain Python value (numpy scalars -> bool/int/float)."""
    return value.item() if hasattr(value, "item") else value


def _is_number(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def shape_table(
    df: pd.DataFrame,
    source: str,
    index: list[str] | None = None,
    pivot: str | None = None,
    values: str | None = None,
    show: list[str] | None = None,
) -> pd.DataFrame:
    """The table as shown: pivoted long -> wide if asked, then cut to ``show`` (in its order)."""
    given = [index is not None, pivot is not None, values is not None]
    if any(given) and not all(given):
        raise ValueError("--index, --pivot and --values go together (a long table made wide)")
    if pivot is not None:
        check_columns(df, [*index, pivot, values], source)
        keys = [*index, pivot]
        dupes = df.duplicated(subset=keys, keep=False)
        if dupes.any():
            example = df.loc[dupes, keys].iloc[0].to_dict()
            raise ValueError(f"{source}: more than one row for {example}")
        order = list(dict.fromkeys(df[pivot]))  # the table's own order, not alphabetical
        df = df.pivot(index=index, columns=pivot, values=values)[order].reset_index()
        df.columns = [str(c) for c in df.columns]
    if show:
        check_columns(df, show, source)
        df = df[show]
    return df


def marks(df: pd.DataFrame, above: float | None, index: list[str]) -> pd.DataFrame:
    """True where a number (outside the index columns) exceeds ``above``."""
    marked = pd.DataFrame(False, index=df.index, columns=df.columns)
    if above is None:
        return marked
    numeric = [c for c in df.columns if c not in index and _is_number(df[c])]
    if not numeric:
        raise ValueError(f"--mark-above {above:g}: the table has no numeric columns to mark")
    for column in numeric:
        marked[column] = df[column] > above
    return marked


def to_html(df: pd.DataFrame, marked: pd.DataFrame, title: str, notes: list[str]) -> str:
    numeric = {c for c in df.columns if _is_number(df[c])}
    # text kept as written (samples, code): a column with a line break keeps its whitespace
    text_columns = {
        c for c in df.columns if c not in numeric and df[c].astype(str).str.contains("\n").any()
    }
    header = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i in range(len(df)):
        cells = []
        for column in df.columns:
            classes = [name for name, on in (("num", column in numeric),
                                             ("text", column in text_columns),
                                             ("mark", marked[column].iat[i])) if on]  # fmt: skip
            attr = f' class="{" ".join(classes)}"' if classes else ""
            text = html.escape(format_value(_cell_value(df[column].iat[i])))
            cells.append(f"<td{attr}>{text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    body = "\n".join(rows)
    note = "".join(f'<p class="note">{html.escape(n)}</p>\n' for n in notes)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>\n{STYLE}\n</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
        f"{note}</body>\n</html>\n"
    )


def run(
    tables: list[Path],
    title: str,
    out: Path,
    index: list[str] | None = None,
    pivot: str | None = None,
    values: str | None = None,
    show: list[str] | None = None,
    mark_above: float | None = None,
) -> pd.DataFrame:
    if out.suffix.lower() != ".html":
        raise ValueError(f"--out must end in .html, got {out}")
    frames = [read_figure_table(path) for path in tables]
    source = str(tables[0]) if len(tables) == 1 else f"{len(tables)} tables ({tables[0]}, ...)"
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if df.empty:
        raise ValueError(f"{source}: table has no rows")
    shown = shape_table(df, source, index, pivot, values, show)
    marked = marks(shown, mark_above, index or [])
    notes = []
    if mark_above is not None:
        label = f"above {mark_above:g}"
        shown = shown.assign(
            **{
                label: [
                    ", ".join(c for c in shown.columns if row[c]) for _, row in marked.iterrows()
                ]
            }
        )
        marked[label] = False
        notes.append(f"Bold: values above {mark_above:g}, named in the last column.")
    notes.append("From " + ", ".join(str(p) for p in tables) + ".")
    with atomic_path(out) as tmp:
        tmp.write_text(to_html(shown, marked, title, notes), encoding="utf-8")
    log.info("wrote %s: %d rows x %d columns", out, len(shown), len(shown.columns))
    return shown


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--table", dest="tables", required=True, nargs="+", type=Path,
        help="tidy CSV table(s); several are concatenated",
    )  # fmt: skip
    parser.add_argument("--title", required=True, help="the page's heading")
    parser.add_argument("--index", nargs="+", default=None, help="pivot: the row key columns")
    parser.add_argument("--pivot", default=None, help="pivot: the column whose values name columns")
    parser.add_argument("--values", default=None, help="pivot: the column of the cells")
    parser.add_argument("--show", nargs="+", default=None, help="the columns shown, in order")
    parser.add_argument(
        "--mark-above", type=float, default=None, help="mark the numbers above this threshold"
    )
    parser.add_argument("--out", required=True, type=Path, help="the page (.html)")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
