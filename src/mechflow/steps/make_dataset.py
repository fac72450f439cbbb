"""Generate a token dataset (``.npy``, shape seq × pos) from one of mechflow's task generators.

Kinds: ``repeated_spans`` (induction training data: random tokens with spans repeated at random
offsets), ``repeated_random`` (``[BOS] + r + r``, the induction-head probe), ``ioi``
(indirect-object sentences in their own word-level vocabulary, each prompt and its answer) and
``othello`` (random legal Othello games, ``[BOS] + moves``; their board labels are written by
``label_othello_games``).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from mechflow.data import induction
from mechflow.data.tokens import save_tokens
from mechflow.experiments.ioi import prompts as ioi
from mechflow.experiments.othello import labels as othello
from mechflow.steps import json_object, keyword_mismatch, parse_and_run, step_parser

log = logging.getLogger(__name__)

GENERATORS = {
    "repeated_spans": induction.repeated_spans,
    "repeated_random": induction.repeated_random,
    "ioi": ioi.ioi_sentences,
    "othello": othello.othello_games,
}


def run(kind: str, spec: dict, out: Path) -> None:
    if kind not in GENERATORS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(GENERATORS)}")
    unknown, missing = keyword_mismatch(GENERATORS[kind], spec)
    if unknown or missing:
        takes = sorted(inspect.signature(GENERATORS[kind]).parameters)
        raise ValueError(
            f"dataset kind {kind!r}: unknown parameter(s) {unknown}, missing {missing} "
            f"(it takes {takes})"
        )
    kwargs = dict(spec)
    if "span_len" in kwargs:
        kwargs["span_len"] = tuple(kwargs["span_len"])
    try:
        tokens = GENERATORS[kind](**kwargs)
    except ValueError as err:
        raise ValueError(f"dataset kind {kind!r}: {err}") from err
    save_tokens(tokens, out)
    log.info("wrote %s: %d sequences x %d positions", out, *tokens.shape)


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--kind", required=True, choices=sorted(GENERATORS))
    parser.add_argument(
        "--spec", required=True, type=json_object, help="generator parameters as JSON"
    )
    parser.add_argument("--out", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
