"""Plot per-position loss on ``[BOS] + r + r``: the repeated half's drop is induction at work.

Reads ``loss_by_position.csv`` (model, pos, half, loss) and writes a PNG plus an SVG with the
same stem. ``--d-vocab`` adds the uniform-guess loss ln(d_vocab) as a reference line.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mechflow.plots.induction import loss_by_position_figure
from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.runtime import start

log = logging.getLogger(__name__)


def run(
    table: Path, out: Path, d_vocab: int | None = None, title: str | None = None
) -> tuple[Path, Path]:
    if d_vocab is not None and d_vocab < 2:
        raise ValueError(f"--d-vocab must be >= 2, got {d_vocab}")
    svg_path(out)  # reject a bad --out before reading anything
    df = read_figure_table(table)
    fig = loss_by_position_figure(df, d_vocab=d_vocab, title=title, source=str(table))
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", required=True, type=Path, help="loss_by_position.csv")
    add_figure_flags(parser)
    parser.add_argument("--d-vocab", type=int, default=None, help="draw ln(d_vocab)")
    args = parser.parse_args(argv)
    start()
    run(args.table, args.out, args.d_vocab, args.title)


if __name__ == "__main__":
    main()
