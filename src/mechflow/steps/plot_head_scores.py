"""Plot previous-token, duplicate-token and induction scores per head (layers x heads heatmaps).

Reads ``head_scores.csv`` (model, layer, head, score, value) and writes a PNG plus an SVG with
the same stem. Heads above ``--threshold`` are boxed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mechflow.plots.induction import DEFAULT_THRESHOLD, head_scores_figure
from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.runtime import start

log = logging.getLogger(__name__)


def run(
    table: Path, out: Path, threshold: float = DEFAULT_THRESHOLD, title: str | None = None
) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    df = read_figure_table(table)
    fig = head_scores_figure(df, threshold=threshold, title=title, source=str(table))
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", required=True, type=Path, help="head_scores.csv")
    add_figure_flags(parser)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    args = parser.parse_args(argv)
    start()
    run(args.table, args.out, args.threshold, args.title)


if __name__ == "__main__":
    main()
