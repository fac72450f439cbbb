"""Map superposition as a phase change: n = 2 features in m = 1 dimension (Elhage et al. 2022).

Reads a ``PhaseMapConfig`` as JSON, trains every (relative importance, feature density) cell with
several restarts (keeping the lowest-loss one) and writes a tidy table with one row per cell:
cell, feature_probability, sparsity, relative_importance, norm_1, norm_2, cosine, bias_1,
bias_2, loss, phase (not represented / dedicated dimension / superposition / unclassified).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from mechflow.artifacts import write_table
from mechflow.experiments.superposition.analysis import PhaseMapConfig, map_phases
from mechflow.runtime import add_runtime_flags, seed_everything
from mechflow.steps import json_object, parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(config: dict, out: Path, progress: bool = True) -> pd.DataFrame:
    cfg = PhaseMapConfig.from_dict(config)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    df = map_phases(cfg, progress=progress)
    write_table(df, out)
    counts = df["phase"].value_counts().to_dict()
    log.info("mapped %d cells in %.1f s: %s", len(df), time.perf_counter() - start, counts)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--config", required=True, type=json_object, help="PhaseMapConfig")
    add_runtime_flags(parser)
    parser.add_argument("--out", required=True, type=Path, help="phases.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
