"""Score how much each head's OV circuit copies tokens (Elhage et al. 2021's eigenvalue test).

For the full OV circuit W_E W_OV W_U of every head, writes ``model, layer, head, score, value``
with ``eigen_ratio`` = Σλ / Σ|λ| (real parts; 1 = pure copying, -1 = anti-copying) and
``positive_fraction`` = share of eigenvalues with positive real part. Eigenvalues are taken on
the d_head × d_head inner product (FactoredMatrix), never the d_vocab × d_vocab matrix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.analysis.inputs import model_name, read_model_config
from mechflow.artifacts import write_table
from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)

COLUMNS = ["model", "layer", "head", "score", "value"]


def run(model_dir: Path, out: Path) -> pd.DataFrame:
    from mechflow.analysis.composition import COPYING_SCORES, copying_scores, full_ov_circuit
    from mechflow.models.build import load_model

    read_model_config(model_dir)  # a clear error before loading TransformerLens
    scores = copying_scores(full_ov_circuit(load_model(model_dir)))
    name = model_name(model_dir)
    rows = []
    for score in COPYING_SCORES:
        for layer, heads in enumerate(scores[score].tolist()):
            for head, value in enumerate(heads):
                rows.append((name, layer, head, score, value))
    df = pd.DataFrame(rows, columns=COLUMNS)
    write_table(df, out)
    ratios = scores["eigen_ratio"]
    log.info("%s: eigen_ratio from %.3f to %.3f", name, ratios.min(), ratios.max())
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    add_runtime_flags(parser)
    parser.add_argument("--out", required=True, type=Path, help="copying.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
