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
from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.runtime import start


def run(table: Path, out: Path, title: str | None = None) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    fig = toy_recovery_figure(read_figure_table(table), source=str(table), title=title)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", required=True, type=Path, help="feature recovery table (.csv)")
    add_figure_flags(parser)
    args = parser.parse_args(argv)
    start()
    run(args.table, args.out, args.title)


if __name__ == "__main__":
    main()
