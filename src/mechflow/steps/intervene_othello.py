"""Edit an OthelloGPT's residual stream along its mine/theirs probes and see whether its moves
follow the edited board (Nanda 2023), against a random direction of the same norm and no edit.

At the residual stream after ``--layer`` blocks, at one position of a held-out game, one of the
mover's stones is pushed to read as the opponent's; only edits that change the legal moves
count. Writes one row per condition and scale (``--out``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(model_dir: Path, tokens: Path, labels: Path, probes: Path, out: Path, *, layer: int,
        scales: list[float], edits: int, seed: int, first_move: int, last_from_end: int,
        batch_size: int):  # fmt: skip
    from mechflow.analysis.inputs import model_name
    from mechflow.artifacts import file_sha256, write_table
    from mechflow.data.tokens import load_tokens
    from mechflow.experiments.othello import interventions
    from mechflow.experiments.othello.labels import probe_positions, read_labels
    from mechflow.experiments.othello.probing import probe_hooks
    from mechflow.models.build import load_model
    from mechflow.probes.io import load_probes

    games = load_tokens(tokens)
    arrays, size = read_labels(labels, games_sha256=file_sha256(tokens), games_from=str(tokens))
    model = load_model(model_dir)
    if not 1 <= layer <= model.cfg.n_layers - 1:
        raise ValueError(
            f"layer {layer}: the edited residual stream needs blocks after it; allowed 1 to "
            f"{model.cfg.n_layers - 1}"
        )
    hook = probe_hooks(model.cfg.n_layers)[layer]
    probe_set = load_probes(probes)
    mask = probe_positions(arrays["valid"], first_move, last_from_end)
    sampled = interventions.sample_edits(
        arrays["relative"], arrays["legal"], arrays["to_move"], mask, size, edits, seed
    )
    table = interventions.run_interventions(
        model, games, probe_set, sampled, hook=hook, scales=scales, seed=seed,
        batch_size=batch_size, size=size,
    )  # fmt: skip
    table.insert(0, "model", model_name(model_dir))
    write_table(table, out)
    for row in table.itertuples():
        log.info("%s scale %s: success %.3f, unchanged %.3f, margin %.2f", row.condition,
                 row.scale, row.success, row.unchanged, row.mean_margin)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    add_runtime_flags(parser)
    parser.add_argument("--tokens", required=True, type=Path, help="the held-out games (.npy)")
    parser.add_argument("--labels", required=True, type=Path, help="their label store (.zarr)")
    parser.add_argument("--probes", required=True, type=Path, help="the relative probes' dir")
    parser.add_argument("--layer", required=True, type=int)
    parser.add_argument("--scales", required=True, type=float, nargs="+")
    parser.add_argument("--edits", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--first-move", required=True, type=int)
    parser.add_argument("--last-from-end", required=True, type=int)
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
