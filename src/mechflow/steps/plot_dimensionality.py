"""Plot feature dimensionality against sparsity, with the paper's sticky fractions marked.

Reads ``features.csv`` and ``instances.csv`` from ``analyze_superposition``; writes a PNG plus an
SVG with the same stem: dimensions per feature m/‖W‖_F² and each feature's D_i vs 1/(1-S).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.plots.superposition import dimensionality_figure
from mechflow.runtime import start

log = logging.getLogger(__name__)


def run(features: Path, instances: Path, out: Path, title: str | None = None) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    fig = dimensionality_figure(
        read_figure_table(features),
        read_figure_table(instances),
        title=title,
        features_source=str(features),
        instances_source=str(instances),
    )
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", required=True, type=Path, help="features.csv")
    parser.add_argument("--instances", required=True, type=Path, help="instances.csv")
    add_figure_flags(parser)
    args = parser.parse_args(argv)
    start()
    run(args.features, args.instances, args.out, args.title)


if __name__ == "__main__":
    main()
