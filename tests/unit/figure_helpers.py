"""Shared by the figure tests: synthetic tables written as CSV, and figures drawn from them
through the generic figure step (as the rules do) or straight from the figure function."""

from __future__ import annotations

import html
import re

from mechflow.artifacts import write_table
from mechflow.plots.style import read_figure_table
from mechflow.steps import plot_figure


def written(tmp_path, tables):
    """Write each table as ``<name>.csv``; name -> path."""
    paths = {}
    for name, make in tables.items():
        paths[name] = tmp_path / f"{name}.csv"
        write_table(make() if callable(make) else make, paths[name])
    return paths


def plot(experiment, figure, paths, out, *extra):
    """``<experiment>.<figure>`` through the figure step, one ``--table`` per path."""
    argv = ["--figure", f"{experiment}.{figure}", "--out", str(out), *extra]
    for name, path in paths.items():
        argv += ["--table", f"{name}={path}"]
    plot_figure.main(argv)


def draw(figures, figure, paths):
    """The figure function's own Figure, from the tables as the step reads them."""
    kind = figures[figure]
    return kind.draw(*(read_figure_table(paths[name]) for name in kind.tables))


def svg_texts(out):
    """Text lines of a figure: with svg.fonttype 'path' each is a comment before its outlines."""
    svg = out.with_suffix(".svg").read_text(encoding="utf-8")
    return [html.unescape(text) for text in re.findall(r"<!-- (.*?) -->", svg)]
