"""Mean probe accuracy over squares per condition, layer and label: the model's probes (on true
and on shuffled labels) beside its random-init control's, the table the probe figures and the
checks read (mechflow.experiments.othello.checks.probe_summary).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(accuracy: Path, control_accuracy: Path, out: Path) -> None:
    from mechflow.artifacts import read_table, write_table
    from mechflow.experiments.othello.checks import probe_summary

    summary = probe_summary(read_table(accuracy), read_table(control_accuracy))
    summary.insert(0, "model", accuracy.parent.name)
    write_table(summary, out)
    for row in summary[summary["label"] == "relative"].itertuples():
        log.info("%s layer %d: mine/theirs %.3f", row.condition, row.layer, row.accuracy)


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--accuracy", required=True, type=Path, help="the model's probe_accuracy.csv"
    )
    parser.add_argument("--control-accuracy", required=True, type=Path,
                        help="its control's probe_accuracy.csv")  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="probe_summary.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
