"""How legally a model plays: on held-out games, the share of positions whose top-1 next move
is legal, the probability mass on legal moves, and the cross-entropy and KL to the uniform
distribution over the legal moves (the true next-move distribution of random games), overall
(``--out``) and per position (``--by-position-out``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(model_dir: Path, tokens: Path, labels: Path, out: Path, by_position_out: Path, *,
        batch_size: int):  # fmt: skip
    import pandas as pd

    from mechflow.analysis.inputs import model_name
    from mechflow.artifacts import file_sha256, write_table
    from mechflow.data.tokens import load_tokens
    from mechflow.experiments.othello.evaluate import legal_move_scores, square_log_probs
    from mechflow.experiments.othello.labels import read_labels
    from mechflow.models.build import load_model

    games = load_tokens(tokens)
    arrays, size = read_labels(labels, games_sha256=file_sha256(tokens), games_from=str(tokens))
    model = load_model(model_dir)
    log_probs = square_log_probs(model, games, size, batch_size)
    summary, by_position = legal_move_scores(log_probs, arrays["legal"])
    name = model_name(model_dir)
    write_table(pd.DataFrame([{"model": name, **summary}]), out)
    by_position.insert(0, "model", name)
    write_table(by_position, by_position_out)
    log.info(
        "%s: top-1 legal %.4f, legal mass %.3f, KL to uniform-over-legal %.3f (%d positions)",
        name, summary["top1_legal"], summary["legal_mass"], summary["kl_to_uniform_legal"],
        summary["positions"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    add_runtime_flags(parser)
    parser.add_argument("--tokens", required=True, type=Path, help="the held-out games (.npy)")
    parser.add_argument("--labels", required=True, type=Path, help="their label store (.zarr)")
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--by-position-out", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
