"""Train a batch of toy models of superposition (Elhage et al. 2022), one per feature probability.

Reads a ``ToyModelConfig`` as JSON and writes ``model.safetensors`` + ``cfg.json`` (the config,
versions, git revision; written last) and a tidy loss log ``train_log.csv`` (step, instance,
feature_probability, loss, lr) into ``--out-dir``; while it trains, the log grows row by row
in ``train_log.partial.csv`` (for ``tail -f``; removed once ``train_log.csv`` is written).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mechflow.artifacts import git_revision, package_versions, write_table
from mechflow.experiments.superposition.toy_model import (
    LOG_COLUMNS,
    ToyModelConfig,
    save_toy_model,
    train_toy_model,
)
from mechflow.progress import LiveTable, live_path
from mechflow.runtime import add_runtime_flags, seed_everything
from mechflow.steps import json_object, parse_and_run, step_parser

log = logging.getLogger(__name__)

LOG_FILE = "train_log.csv"


def run(config: dict, out_dir: Path, progress: bool = True) -> None:
    cfg = ToyModelConfig.from_dict(config)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    with LiveTable(live_path(out_dir / LOG_FILE), LOG_COLUMNS) as live:
        model, loss_log = train_toy_model(cfg, progress=progress, on_log=live.append)
    seconds = time.perf_counter() - start
    final = loss_log[loss_log["step"] == cfg.steps]
    write_table(loss_log, out_dir / LOG_FILE)
    live.remove()
    save_toy_model(
        model,
        cfg,
        out_dir,
        extra={
            "source": "trained",
            "final_loss": dict(
                zip(final["instance"].tolist(), final["loss"].tolist(), strict=True)
            ),
            "train_seconds": round(seconds, 2),
            "versions": package_versions(("mechflow", "torch", "numpy")),
            "git_revision": git_revision(),
        },
    )
    log.info(
        "trained %d toy models (n=%d, m=%d) in %.1f s; final loss %.3g (p=%.3g) .. %.3g (p=%.3g)",
        cfg.n_instances,
        cfg.n_features,
        cfg.d_hidden,
        seconds,
        final["loss"].iloc[0],
        final["feature_probability"].iloc[0],
        final["loss"].iloc[-1],
        final["feature_probability"].iloc[-1],
    )


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--config", required=True, type=json_object, help="ToyModelConfig")
    add_runtime_flags(parser)
    parser.add_argument("--out-dir", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
