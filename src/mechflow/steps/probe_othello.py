"""Train linear probes of an OthelloGPT's residual stream at every layer, for every square: the
board mine/theirs/empty and black/white/empty, legal next moves and flipped stones (one
batched sweep each), on the middle of each game (moves ``--first-move`` to
n - ``--last-from-end``), split by game; optionally the same on shuffled labels (a control).

Reads the activation store and the label store of the same games (refused otherwise, by the
games' sha256). Writes the probes (``<out-dir>/<label>/probes.safetensors`` + ``cfg.json``),
their accuracies (``--accuracy-out``, one row per condition, layer, label and square) and the
predictions on one held-out game (``--boards-out``, the board heatmaps).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.runtime import add_runtime_flags
from mechflow.steps import json_object, parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(store: Path, labels: Path, hooks: list[str], probe_config: dict, out_dir: Path,
        accuracy_out: Path, boards_out: Path, *, first_move: int, last_from_end: int,
        shuffled_control: bool, example_positions: int) -> None:  # fmt: skip
    import numpy as np
    import pandas as pd

    from mechflow.artifacts import write_table
    from mechflow.experiments.othello import probing
    from mechflow.experiments.othello.labels import CLASSES, probe_positions, read_labels
    from mechflow.probes.config import ProbeConfig
    from mechflow.probes.io import save_probes
    from mechflow.probes.sources import StoreSource
    from mechflow.probes.train import train_probes
    from mechflow.store import open_store

    acts = open_store(store)
    missing = [h for h in hooks if h not in acts.provenance["hooks"]]
    if missing:
        raise ValueError(f"{store}: no hook(s) {missing}; it holds {acts.provenance['hooks']}")
    arrays, size = read_labels(
        labels, games_sha256=acts.provenance["dataset_sha256"], games_from=str(store)
    )
    if not np.array_equal(arrays["tokens"], acts.tokens()):
        raise ValueError(f"{labels}: its games' tokens differ from those of {store}")
    mask = probe_positions(arrays["valid"], first_move, last_from_end)
    if not mask.any():
        raise ValueError(
            f"no position lies between move {first_move} and n - {last_from_end} in {labels}"
        )
    source = StoreSource(acts, hooks)
    tables, results = [], {}
    for label in probing.LABELS:
        classes = CLASSES[label][0]
        cfg = ProbeConfig.from_dict({**probe_config, "n_classes": len(classes)})
        y, targets = probing.sweep_labels(arrays, [label], mask)
        common = dict(hook_names=hooks, target_names=targets, class_names=classes)
        results[label] = train_probes(source, y, cfg, **common)
        save_probes(results[label].probes, out_dir / label, provenance={"labels": str(labels)})
        tables.append(probing.accuracy_table(results[label].table, "trained"))
        if shuffled_control:
            control = train_probes(source, probing.shuffle_rows(y, cfg.seed), cfg, **common)
            tables.append(probing.accuracy_table(control.table, "shuffled labels"))
    accuracy = pd.concat(tables, ignore_index=True)
    write_table(accuracy, accuracy_out)
    boards = probing.example_boards(
        results, acts, arrays, mask, hooks, n_positions=example_positions
    )
    write_table(boards, boards_out)
    for row in probing.summarise(accuracy).itertuples():
        log.info("%s layer %d %s: %.3f (majority %.3f)", row.condition, row.layer, row.label,
                 row.accuracy, row.baseline)  # fmt: skip
    log.info("board %dx%d, %d probed positions", size, size, int(mask.sum()))


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    add_runtime_flags(parser)
    parser.add_argument("--store", required=True, type=Path, help="the activation store")
    parser.add_argument("--labels", required=True, type=Path, help="the games' label store")
    parser.add_argument("--hook", dest="hooks", action="append", required=True)
    parser.add_argument("--probe-config", required=True, type=json_object,
                        help="ProbeConfig fields as JSON (n_classes follows from the labels)")  # fmt: skip
    parser.add_argument("--first-move", required=True, type=int)
    parser.add_argument("--last-from-end", required=True, type=int)
    parser.add_argument("--shuffled-control", action="store_true")
    parser.add_argument("--example-positions", required=True, type=int)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--accuracy-out", required=True, type=Path)
    parser.add_argument("--boards-out", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
