"""Plot the sparsity/fidelity frontier of an SAE sweep: (a) CE loss recovered (zero ablation) and
(b) fraction of variance unexplained against L0 (log scale), one line per architecture.

Reads the metrics tables written by ``evaluate_sae`` (one per SAE, concatenated); writes a PNG
and an SVG with the same stem.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from mechflow.plots.saes import sae_frontier_figure
from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.runtime import start


def run(metrics: list[Path], out: Path, title: str | None = None) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    if not metrics:
        raise ValueError("--metrics: give at least one metrics table")
    table = pd.concat([read_figure_table(path) for path in metrics], ignore_index=True)
    source = str(metrics[0]) if len(metrics) == 1 else f"{len(metrics)} --metrics tables"
    return save_figure(sae_frontier_figure(table, source=source, title=title), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--metrics", required=True, type=Path, nargs="+", help="evaluate_sae tables (.csv)"
    )
    add_figure_flags(parser)
    args = parser.parse_args(argv)
    start()
    run(args.metrics, args.out, args.title)


if __name__ == "__main__":
    main()
