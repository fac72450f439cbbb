"""Score Q-, K- and V-composition between every pair of heads in different layers.

Writes ``model, kind, layer_from, head_from, layer_to, head_to, score, baseline``: ``score`` is
‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F) with W_A the earlier head's W_OV and W_B the later head's W_QK (Q),
W_QKᵀ (K) or W_OV (V) (Elhage et al. 2021, row-vector convention); ``baseline`` is the mean score
of random Gaussian low-rank matrices of the same shapes. A one-layer model gives an empty table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.analysis.inputs import model_name, read_model_config
from mechflow.artifacts import write_table
from mechflow.runtime import add_runtime_flags, seed_everything
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)

COLUMNS = ["model", "kind", "layer_from", "head_from", "layer_to", "head_to", "score", "baseline"]


def run(model_dir: Path, out: Path, *, baseline_samples: int, seed: int) -> pd.DataFrame:
    from mechflow.analysis.composition import (
        KINDS,
        model_composition_scores,
        random_composition_baseline,
    )
    from mechflow.models.build import load_model

    if baseline_samples < 1:
        raise ValueError(f"--baseline-samples must be >= 1, got {baseline_samples}")
    cfg = read_model_config(model_dir)
    seed_everything(seed)
    name = model_name(model_dir)
    rows = []
    if cfg["n_layers"] > 1:
        baseline = random_composition_baseline(
            cfg["d_model"], cfg["d_head"], baseline_samples, seed
        )
        scores = model_composition_scores(load_model(model_dir))
        for kind in KINDS:
            for (l_from, l_to), matrix in scores[kind].items():
                for h_from, row in enumerate(matrix.tolist()):
                    for h_to, value in enumerate(row):
                        rows.append((name, kind, l_from, h_from, l_to, h_to, value, baseline))
        log.info("random baseline %.3f over %d samples", baseline, baseline_samples)
    else:
        log.info("%s has one layer: no composition to score", name)
    df = pd.DataFrame(rows, columns=COLUMNS)
    write_table(df, out)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    parser.add_argument("--baseline-samples", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    add_runtime_flags(parser)
    parser.add_argument("--out", required=True, type=Path, help="composition.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
