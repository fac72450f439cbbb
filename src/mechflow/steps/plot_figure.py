"""Draw one figure of an experiment from its tidy tables: PNG for the report, SVG beside it.

Every plot rule runs this one step; ``--figure <experiment>.<name>`` picks the figure function
from ``mechflow.experiments.<experiment>.figures.FIGURES``. Tables come as ``--table NAME=PATH``
(a name given several times concatenates its files, e.g. a sweep's metrics) and the figure's
settings as ``--option NAME=VALUE``. Figures never touch a model.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pandas as pd

from mechflow.plots.style import (
    FigureKind,
    add_figure_flags,
    read_figure_table,
    save_figure,
    svg_path,
)
from mechflow.runtime import start
from mechflow.steps import step_parser

log = logging.getLogger(__name__)


def figure_kind(figure: str) -> FigureKind:
    """``<experiment>.<name>`` -> its FigureKind, with the known names in the error."""
    experiment, _, name = figure.partition(".")
    try:
        figures = importlib.import_module(f"mechflow.experiments.{experiment}.figures").FIGURES
    except ModuleNotFoundError as err:
        raise ValueError(f"--figure {figure!r}: no experiment {experiment!r} with figures") from err
    if name not in figures:
        raise ValueError(f"--figure {figure!r}: {experiment} has figures {sorted(figures)}")
    return figures[name]


def _pairs(flag: str, items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag} {item!r}: expected NAME=VALUE")
        pairs.append((name, value))
    return pairs


def run(
    figure: str,
    tables: dict[str, list[Path]],
    out: Path,
    options: dict[str, str] | None = None,
    title: str | None = None,
) -> tuple[Path, Path]:
    kind = figure_kind(figure)
    svg_path(out)  # reject a bad --out before reading anything
    options = options or {}
    if set(tables) != set(kind.tables):  # a missing or an extra table
        raise ValueError(
            f"--table: {figure} takes tables {sorted(kind.tables)}, got {sorted(tables)}"
        )
    bad = sorted(set(options) - set(kind.options))
    if bad:
        raise ValueError(f"--option {bad}: {figure} takes options {sorted(kind.options)}")
    frames, kwargs = [], {}
    for name in kind.tables:  # the figure function's order
        paths = tables[name]
        read = [read_figure_table(path) for path in paths]
        frames.append(read[0] if len(read) == 1 else pd.concat(read, ignore_index=True))
        if kind.tables[name]:
            kwargs[kind.tables[name]] = (
                str(paths[0]) if len(paths) == 1 else f"{len(paths)} {name} tables"
            )
    for name, value in options.items():
        try:
            kwargs[name] = kind.options[name](value)
        except ValueError as err:
            raise ValueError(
                f"--option {name}={value!r}: not a {kind.options[name].__name__}"
            ) from err
    return save_figure(kind.draw(*frames, **kwargs, title=title), out)


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--figure", required=True, help="<experiment>.<figure>, e.g. grokking.grokking_curves"
    )
    parser.add_argument(
        "--table", required=True, action="append", default=[], help="NAME=PATH; repeatable"
    )
    parser.add_argument("--option", action="append", default=[], help="NAME=VALUE; repeatable")
    add_figure_flags(parser)
    args = parser.parse_args(argv)
    start()
    tables: dict[str, list[Path]] = {}
    for name, path in _pairs("--table", args.table):
        tables.setdefault(name, []).append(Path(path))
    run(args.figure, tables, args.out, dict(_pairs("--option", args.option)), args.title)


if __name__ == "__main__":
    main()
