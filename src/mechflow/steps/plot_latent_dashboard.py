"""Plot a dashboard of a few SAE latents: one row per latent with the histogram of its nonzero
activations, its top-activating contexts (token ids, the activating token bracketed) and its
direct logit effects.

Writes a PNG and an SVG with the same stem; reads only the three tables written by
``summarize_sae_latents``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mechflow.plots.saes import latent_dashboard_figure
from mechflow.plots.style import add_figure_flags, read_figure_table, save_figure, svg_path
from mechflow.runtime import start


def run(
    contexts: Path, histograms: Path, logits: Path, out: Path, title: str | None = None
) -> tuple[Path, Path]:
    svg_path(out)  # reject a bad --out before reading anything
    fig = latent_dashboard_figure(
        read_figure_table(contexts),
        read_figure_table(histograms),
        read_figure_table(logits),
        source=str(contexts.parent),
        title=title,
    )
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contexts", required=True, type=Path, help="top contexts table (.csv)")
    parser.add_argument("--histograms", required=True, type=Path, help="histogram table (.csv)")
    parser.add_argument("--logits", required=True, type=Path, help="logit effect table (.csv)")
    add_figure_flags(parser)
    args = parser.parse_args(argv)
    start()
    run(args.contexts, args.histograms, args.logits, args.out, args.title)


if __name__ == "__main__":
    main()
