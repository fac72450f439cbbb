"""Plot restricted and excluded loss, train/test loss and the weight norm over checkpoints.

Phases are shaded from ``phases.csv``.

Writes a PNG and an SVG with the same stem; reads only the tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mechflow.plots.grokking import progress_measures_figure
from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.runtime import start


def run(table: Path, phases: Path, out: Path, title: str | None = None) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    fig = progress_measures_figure(
        read_figure_table(table), read_figure_table(phases), source=str(table), title=title
    )
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", required=True, type=Path, help="progress.csv")
    parser.add_argument("--phases", required=True, type=Path, help="phases.csv")
    add_figure_flags(parser)
    args = parser.parse_args(argv)
    start()
    run(args.table, args.phases, args.out, args.title)


if __name__ == "__main__":
    main()
