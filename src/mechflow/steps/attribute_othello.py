"""Attribute an OthelloGPT's moves: direct logit attribution of every head, MLP and embedding
to the predicted move (against the mean legal move) over held-out positions; activation
patching of one swapped move, read ``--later`` moves on (the residual stream by layer and
position, each sublayer and head); and the most board-like neurons of one MLP read through the mine/theirs probes, with
their mean activation per square state.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(model_dir: Path, tokens: Path, labels: Path, probes: Path, attribution_out: Path,
        patching_out: Path, neurons_out: Path, activations_out: Path, *, move: int, games: int,
        later: int, neuron_layer: int, neurons: int, seed: int, first_move: int, last_from_end: int,
        batch_size: int):  # fmt: skip
    from mechflow.analysis.inputs import model_name
    from mechflow.artifacts import file_sha256, write_table
    from mechflow.data.tokens import load_tokens
    from mechflow.experiments.othello import attribution
    from mechflow.experiments.othello.labels import probe_positions, read_labels
    from mechflow.models.build import load_model
    from mechflow.probes.io import load_probes

    rows = load_tokens(tokens)
    arrays, _ = read_labels(labels, games_sha256=file_sha256(tokens), games_from=str(tokens))
    model = load_model(model_dir)
    name = model_name(model_dir)
    mask = probe_positions(arrays["valid"], first_move, last_from_end)
    dla = attribution.direct_logit_attribution(
        model, rows, arrays["legal"], mask, batch_size=batch_size
    )
    patching = attribution.move_patching(
        model, rows, move=move, n_games=games, seed=seed, batch_size=batch_size, later=later
    )
    read = attribution.neurons_in_probe_basis(
        model, load_probes(probes), layer=neuron_layer, n_neurons=neurons
    )
    chosen = read.drop_duplicates("neuron").sort_values("rank")["neuron"].tolist()
    states = attribution.neuron_activation_by_state(
        model, rows, arrays, mask, layer=neuron_layer, neurons=chosen, batch_size=batch_size
    )
    for table, out in ((dla, attribution_out), (patching, patching_out), (read, neurons_out),
                       (states, activations_out)):  # fmt: skip
        table.insert(0, "model", name)
        write_table(table, out)
    top = dla.reindex(dla["mean"].abs().sort_values(ascending=False).index).head(3)
    log.info("largest direct effects on the predicted move: %s",
             ", ".join(f"{r.component} {r.mean:.2f}" for r in top.itertuples()))  # fmt: skip
    log.info("neurons of MLP %d in the probe basis: %s", neuron_layer, chosen)


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    add_runtime_flags(parser)
    parser.add_argument("--tokens", required=True, type=Path, help="the held-out games (.npy)")
    parser.add_argument("--labels", required=True, type=Path, help="their label store (.zarr)")
    parser.add_argument("--probes", required=True, type=Path, help="the relative probes' dir")
    parser.add_argument("--move", required=True, type=int, help="the move swapped in patching")
    parser.add_argument("--games", required=True, type=int, help="games whose move is swapped")
    parser.add_argument("--later", required=True, type=int,
                        help="moves after the swapped one before the metric is read")  # fmt: skip
    parser.add_argument("--neuron-layer", required=True, type=int)
    parser.add_argument("--neurons", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--first-move", required=True, type=int)
    parser.add_argument("--last-from-end", required=True, type=int)
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--attribution-out", required=True, type=Path)
    parser.add_argument("--patching-out", required=True, type=Path)
    parser.add_argument("--neurons-out", required=True, type=Path)
    parser.add_argument("--activations-out", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
