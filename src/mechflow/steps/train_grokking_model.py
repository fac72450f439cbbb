"""Train the grokking model: a one-layer transformer on ``a b =`` → (a + b) mod p, full batch.

Writes ``model.safetensors`` + ``config.json`` (architecture, task, training, versions), the
train/test loss log ``train_log.csv`` (growing in ``train_log.partial.csv`` while it trains,
for ``tail -f``), the split ``split.npz`` and weights at every configured
epoch under ``checkpoints/``; every progress measure is computed later from those checkpoints.
The architecture's n_ctx, d_vocab and d_vocab_out follow from the modulus.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from mechflow.artifacts import atomic_path, git_revision, package_versions, write_table
from mechflow.experiments.grokking.inputs import CHECKPOINT_UNIT, SPLIT_FILE
from mechflow.experiments.grokking.modular_addition import (
    all_pairs,
    check_task,
    task_architecture,
    train_test_split,
)
from mechflow.models.build import build_model, save_model, save_weights
from mechflow.models.checkpoints import checkpoint_name
from mechflow.models.config import FullBatchTrainingConfig
from mechflow.models.train_full_batch import LOG_COLUMNS, train_full_batch
from mechflow.progress import LiveTable, live_path
from mechflow.runtime import add_runtime_flags, pick_device, seed_everything
from mechflow.steps import json_object, parse_and_run, step_parser

log = logging.getLogger(__name__)

LOG_FILE = "train_log.csv"


def run(
    modulus: int,
    train_fraction: float,
    data_seed: int,
    architecture: dict,
    training: dict,
    out_dir: Path,
    device: str = "auto",
    progress: bool = True,
) -> None:
    check_task(modulus, train_fraction)
    arch = task_architecture(architecture, modulus)
    cfg = FullBatchTrainingConfig.from_dict(training)
    inputs, labels = all_pairs(modulus)
    train_rows, test_rows = train_test_split(modulus, train_fraction, data_seed)
    seed_everything(cfg.seed)
    model = build_model(arch, seed=cfg.seed).to(pick_device(device))
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / SPLIT_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, train=train_rows, test=test_rows)

    def on_checkpoint(epoch, model):
        save_weights(model, ckpt_dir / checkpoint_name(epoch, CHECKPOINT_UNIT))

    start = time.perf_counter()
    with LiveTable(live_path(out_dir / LOG_FILE), LOG_COLUMNS) as live:
        log_df = train_full_batch(
            model,
            inputs,
            labels,
            train_rows,
            test_rows,
            cfg,
            on_checkpoint,
            progress=progress,
            on_log=live.append,
            desc=f"train {out_dir.name}",
        )
    seconds = time.perf_counter() - start
    write_table(log_df, out_dir / LOG_FILE)
    live.remove()
    last = log_df.iloc[-1]
    save_model(
        model,
        out_dir,
        extra={
            "source": "trained",
            "architecture": arch.to_dict(),
            "task": {"modulus": modulus, "train_fraction": train_fraction, "data_seed": data_seed},
            "training": json.loads(json.dumps(training)),
            "final": {k: float(last[k]) for k in log_df.columns if k != "epoch"},
            "train_seconds": round(seconds, 2),
            "versions": package_versions(),
            "git_revision": git_revision(),
        },
    )
    log.info(
        "trained %s for %d epochs in %.1f s: train loss %.2e, test accuracy %.3f",
        out_dir.name,
        cfg.epochs,
        seconds,
        last["train_loss"],
        last["test_accuracy"],
    )


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--modulus", required=True, type=int, help="p, an odd prime")
    parser.add_argument("--train-fraction", required=True, type=float)
    parser.add_argument("--data-seed", required=True, type=int, help="seed of the train/test split")
    parser.add_argument(
        "--architecture", required=True, type=json_object, help="Architecture fields as JSON"
    )
    parser.add_argument(
        "--training", required=True, type=json_object, help="FullBatchTrainingConfig as JSON"
    )
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out-dir", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
