"""Hold a grokking run to the paper's claims: thresholds on its progress measures and frequencies.

Writes ``checks.csv`` (model, check, value, threshold, passed, meaning). With ``--enforce`` the
step fails (after writing the table, so the evidence is kept) when any check fails: a workflow
that promises the paper's result stops when the run did not reproduce it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.experiments.grokking.checks import grokking_checks
from mechflow.plots.style import check_columns, read_figure_table
from mechflow.steps import parse_and_check, report_checks, step_parser

log = logging.getLogger(__name__)


def run(progress: Path, phases: Path, keys: Path, out: Path, enforce: bool = False) -> pd.DataFrame:
    progress_df, phases_df, keys_df = (read_figure_table(p) for p in (progress, phases, keys))
    check_columns(progress_df, ["model", "epoch", "metric", "value"], str(progress))
    check_columns(phases_df, ["phase", "start_epoch", "end_epoch"], str(phases))
    check_columns(keys_df, ["frequency", "embedding_share"], str(keys))
    checks = grokking_checks(progress_df, phases_df, keys_df)
    checks.insert(0, "model", progress_df["model"].iloc[0])
    report_checks(checks, out, enforce=enforce, what="grokking")
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--progress", required=True, type=Path, help="progress.csv")
    parser.add_argument("--phases", required=True, type=Path, help="phases.csv")
    parser.add_argument(
        "--key-frequencies", dest="keys", required=True, type=Path, help="key_frequencies.csv"
    )
    parser.add_argument("--enforce", action="store_true", help="fail when a check fails")
    parser.add_argument("--out", required=True, type=Path, help="checks.csv")
    parse_and_check(parser, run, argv)


if __name__ == "__main__":
    main()
