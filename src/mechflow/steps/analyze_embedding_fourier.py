"""Express the grokking model's token embedding in the Fourier basis of Z_p.

Writes ``embedding_fourier.csv``: frequency (0 = constant), component (const/cos/sin), norm,
and ``share``, the fraction of the embedding's non-constant squared norm on that frequency.
A grokked model puts most of it on a handful of key frequencies.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.artifacts import write_table
from mechflow.experiments.grokking.fourier import embedding_fourier_norms
from mechflow.experiments.grokking.inputs import read_run
from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(model_dir: Path, out: Path) -> pd.DataFrame:
    task = read_run(model_dir)
    model = task.load()
    w_e = model.W_E.detach()[: task.modulus].double().numpy()  # p d_model; '=' row dropped
    df = embedding_fourier_norms(w_e)
    df.insert(0, "model", model_dir.name)
    write_table(df, out)
    top = df[df.component == "cos"].sort_values("share", ascending=False).head(5)
    log.info(
        "largest embedding frequencies: %s",
        dict(zip(top.frequency, top.share.round(3), strict=True)),
    )
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    add_runtime_flags(parser)
    parser.add_argument("--out", required=True, type=Path, help="embedding_fourier.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
