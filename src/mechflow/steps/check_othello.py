"""Hold an OthelloGPT's results to the paper's claims (mechflow.experiments.othello.checks).

Writes ``checks.csv`` (model, check, value, threshold, passed, meaning, enforced); with
``--enforce`` the step fails after writing it when an enforced check fails.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.steps import json_object, parse_and_check, report_checks, step_parser

log = logging.getLogger(__name__)


def run(legal: Path, summary: Path, interventions: Path, thresholds: dict, out: Path, *,
        enforce: bool = False, report_only: list[str] | None = None):  # fmt: skip
    from mechflow.artifacts import read_table
    from mechflow.experiments.othello.checks import othello_checks

    legal_table = read_table(legal)
    model = legal_table["model"].iloc[0]
    checks = othello_checks(legal_table, read_table(summary), read_table(interventions),
                            **thresholds)  # fmt: skip
    checks.insert(0, "model", model)
    unknown = sorted(set(report_only or ()) - set(checks["check"]))
    if unknown:
        raise ValueError(f"report-only checks {unknown} are no checks of {list(checks['check'])}")
    checks["enforced"] = ~checks["check"].isin(report_only or ())
    report_checks(checks, out, enforce=enforce, what="OthelloGPT")
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--legal", required=True, type=Path, help="the model's legal_moves.csv")
    parser.add_argument("--summary", required=True, type=Path, help="probe_summary.csv")
    parser.add_argument("--interventions", required=True, type=Path)
    parser.add_argument("--thresholds", required=True, type=json_object)
    parser.add_argument("--enforce", action="store_true", help="fail when a check fails")
    parser.add_argument("--report-only", action="append", default=[], metavar="CHECK",
                        help="a check reported but never enforced (repeatable)")  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="checks.csv")
    parse_and_check(parser, run, argv)


if __name__ == "__main__":
    main()
