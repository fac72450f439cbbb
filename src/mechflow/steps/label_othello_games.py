"""Label Othello games: replay a token dataset's games with the rules and store, per position,
the board (in colours and from the side to move), the legal next moves and the flipped stones.

The labels are a zarr v3 store in the activation-store layout (``seq, pos, square`` axes, the
games' tokens beside them, the dataset's sha256 in the provenance), so probes pair them with the
activations of the same games by index, and a store of other games is refused by its hash.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.artifacts import file_sha256
from mechflow.data.tokens import load_tokens
from mechflow.experiments.othello import labels
from mechflow.steps import parse_and_run, step_parser
from mechflow.store.writer import write_array_store

log = logging.getLogger(__name__)


def run(tokens_path: Path, board_size: int, dataset: str, out: Path) -> None:
    tokens = load_tokens(tokens_path)
    if labels.board_size_of(tokens.shape[1]) != board_size:
        raise ValueError(
            f"{tokens_path}: rows of {tokens.shape[1]} positions are not {board_size}x"
            f"{board_size} games (those take {labels.seq_len(board_size)})"
        )
    try:
        arrays = labels.label_games(tokens, board_size)
    except ValueError as err:
        raise ValueError(f"{tokens_path}: {err}") from err
    write_array_store(
        out,
        arrays,
        provenance=labels.label_provenance(dataset, file_sha256(tokens_path), board_size),
        tokens=tokens,
        dtype="int8",
        compression="zstd",
        dims={k: labels.DIMS[k] for k in arrays},
    )
    lengths = labels.game_lengths(arrays["valid"])
    log.info(
        "labelled %d games of %dx%d (moves %d to %d, mean %.1f)",
        len(tokens), board_size, board_size, lengths.min(), lengths.max(), lengths.mean(),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--tokens", dest="tokens_path", required=True, type=Path)
    parser.add_argument("--board-size", required=True, type=int)
    parser.add_argument("--dataset", required=True, help="the dataset's name (provenance)")
    parser.add_argument("--out", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
