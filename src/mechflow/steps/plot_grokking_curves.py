"""Plot a grokking run's train and test loss and accuracy on log axes, phases shaded.

The memorisation, circuit-formation and cleanup boundaries come from ``phases.csv``.

Writes a PNG and an SVG with the same stem; reads only the tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mechflow.plots.grokking import grokking_curves_figure
from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.runtime import start


def run(log: Path, phases: Path, out: Path, title: str | None = None) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    fig = grokking_curves_figure(
        read_figure_table(log), read_figure_table(phases), source=str(log), title=title
    )
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log", required=True, type=Path, help="train_log.csv")
    parser.add_argument("--phases", required=True, type=Path, help="phases.csv")
    add_figure_flags(parser)
    args = parser.parse_args(argv)
    start()
    run(args.log, args.phases, args.out, args.title)


if __name__ == "__main__":
    main()
