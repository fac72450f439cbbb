"""Hold a model's IOI results to what they must show (mechflow.experiments.ioi.checks).

Writes ``checks.csv`` (model, check, value, threshold, passed, meaning); with ``--enforce`` the
step fails after writing it when a check fails.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.steps import parse_and_check, report_checks, step_parser

log = logging.getLogger(__name__)


def run(accuracy: Path, classes: Path, faithfulness: Path, out: Path, *, reference: str,
        min_accuracy: float, enforce: bool = False):  # fmt: skip
    from mechflow.artifacts import read_table
    from mechflow.experiments.ioi.checks import ioi_checks

    acc = read_table(accuracy)
    checks = ioi_checks(acc, read_table(classes), read_table(faithfulness),
                        reference=reference, min_accuracy=min_accuracy)  # fmt: skip
    checks.insert(0, "model", acc["model"].iloc[0])
    report_checks(checks, out, enforce=enforce, what="IOI")
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--accuracy", required=True, type=Path, help="accuracy.csv")
    parser.add_argument("--classes", required=True, type=Path, help="head_classes.csv")
    parser.add_argument("--faithfulness", required=True, type=Path, help="faithfulness.csv")
    parser.add_argument("--reference", required=True, choices=["trained", "gpt2", "none"])
    parser.add_argument("--min-accuracy", required=True, type=float)
    parser.add_argument("--enforce", action="store_true", help="fail when a check fails")
    parser.add_argument("--out", required=True, type=Path, help="checks.csv")
    parse_and_check(parser, run, argv)


if __name__ == "__main__":
    main()
