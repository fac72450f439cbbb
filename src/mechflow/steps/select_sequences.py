"""Draw a ``subset`` dataset: sequences of another dataset's split, without replacement.

The rows are drawn with ``--seed`` and kept in their original order, so a few hundred rows
sample the whole corpus (a text dataset's first rows are its first files only). Used to cache
and evaluate on part of a large dataset; the tokenizer is the source dataset's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.data.tokens import load_tokens, save_tokens, select_sequences
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(source: Path, n_sequences: int, seed: int, out: Path) -> None:
    tokens = load_tokens(source)
    if n_sequences > len(tokens):
        raise ValueError(
            f"--n-sequences {n_sequences}: {source} holds only {len(tokens)} sequences"
        )
    subset = select_sequences(tokens, n_sequences, seed)
    save_tokens(subset, out)
    log.info("wrote %s: %d of %d sequences of %s", out, len(subset), len(tokens), source)


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--source", required=True, type=Path, help="the split drawn from (.npy)")
    parser.add_argument("--n-sequences", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
