"""Plot WᵀW, the bias and the feature norms of each toy-model instance, coloured by superposition.

Reads ``wtw.csv`` and ``features.csv`` from ``analyze_superposition`` and writes a PNG plus an SVG
with the same stem (the paper's sparsity sweep of WᵀW heatmaps).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.plots.superposition import superposition_figure
from mechflow.runtime import start

log = logging.getLogger(__name__)


def run(wtw: Path, features: Path, out: Path, title: str | None = None) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    fig = superposition_figure(
        read_figure_table(wtw),
        read_figure_table(features),
        title=title,
        wtw_source=str(wtw),
        features_source=str(features),
    )
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wtw", required=True, type=Path, help="wtw.csv")
    parser.add_argument("--features", required=True, type=Path, help="features.csv")
    add_figure_flags(parser)
    args = parser.parse_args(argv)
    start()
    run(args.wtw, args.features, args.out, args.title)


if __name__ == "__main__":
    main()
