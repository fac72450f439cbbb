"""Plot the loss increase from zero- and mean-ablating each head (diverging heatmaps at 0).

Reads ``head_ablation.csv`` (model, layer, head, ablation, loss, clean_loss, delta) and writes a
PNG plus an SVG with the same stem.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mechflow.plots.induction import head_ablation_figure
from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.runtime import start

log = logging.getLogger(__name__)


def run(table: Path, out: Path, title: str | None = None) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    df = read_figure_table(table)
    fig = head_ablation_figure(df, title=title, source=str(table))
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", required=True, type=Path, help="head_ablation.csv")
    add_figure_flags(parser)
    args = parser.parse_args(argv)
    start()
    run(args.table, args.out, args.title)


if __name__ == "__main__":
    main()
