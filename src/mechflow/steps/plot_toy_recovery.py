"""Plot how well an SAE trained on toy-model activations recovered the true features: the max
cosine of each feature with any decoder row, a dashed line at 0.9, features the toy model does
not represent greyed, and the fraction of represented features recovered in the title.

Reads a table ``feature, importance, norm, represented, max_cosine, best_latent`` (one SAE);
writes a PNG and an SVG with the same stem.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mechflow.plots.saes import toy_recovery_figure
from mechflow.plots.style import read_figure_table, save_figure, svg_path
from mechflow.runtime import setup_logging


def run(table: Path, out: Path, title: str | None = None) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    fig = toy_recovery_figure(read_figure_table(table), source=str(table), title=title)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", required=True, type=Path, help="feature recovery table (.csv)")
    parser.add_argument("--out", required=True, type=Path, help="figure .png (SVG written beside)")
    parser.add_argument("--title", default=None, help="replaces the default title")
    args = parser.parse_args(argv)
    setup_logging()
    run(args.table, args.out, args.title)


if __name__ == "__main__":
    main()
