"""Plot the grokking model's activations over all inputs (a, b): each head's attention from '='
to a and the most periodic neuron of each key frequency, as heatmaps.

Writes a PNG and an SVG with the same stem; reads only ``activation_maps.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mechflow.plots.grokking import activation_maps_figure
from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.runtime import start


def run(table: Path, out: Path, title: str | None = None) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    fig = activation_maps_figure(read_figure_table(table), source=str(table), title=title)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", required=True, type=Path, help="activation_maps.csv")
    add_figure_flags(parser)
    args = parser.parse_args(argv)
    start()
    run(args.table, args.out, args.title)


if __name__ == "__main__":
    main()
