"""Train a HookedTransformer from an architecture and training config on a token dataset.

Writes ``model.safetensors`` + ``config.json`` (architecture, training config, dataset hash,
versions, git revision), a tidy loss log, and weights at each configured checkpoint step.
A killed run resumes from its last checkpoint step when rerun with the same arguments (its
state is kept in ``<out-dir>/resume/``, deleted on success) and ends with the same bytes.
While it trains, the loss log grows row by row in ``train_log.partial.csv`` (for ``tail -f``;
removed once ``train_log.csv`` is written) and progress lines go to the log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mechflow.artifacts import file_sha256, git_revision, package_versions, write_table
from mechflow.data.tokens import load_tokens
from mechflow.models.build import build_model, save_model, save_weights
from mechflow.models.checkpoints import checkpoint_name
from mechflow.models.config import Architecture, TrainingConfig
from mechflow.models.objectives import Objective, SoftTargetNextMove
from mechflow.models.train import log_columns, train
from mechflow.progress import LiveTable, live_path
from mechflow.runtime import add_runtime_flags, pick_device, seed_everything
from mechflow.steps import json_object, parse_and_run, step_parser

log = logging.getLogger(__name__)


class _Objective(NamedTuple):
    """What ``training.objective`` names: the arrays the trainer reads, and the loss."""

    arrays: Callable[[np.ndarray, Architecture], Any]
    make: Callable[[], Objective | None]


def _legal_move_arrays(tokens: np.ndarray, arch: Architecture) -> dict[str, np.ndarray]:
    from mechflow.experiments.othello.labels import legal_move_targets

    tokens = np.asarray(tokens)
    return {"tokens": tokens, "targets": legal_move_targets(tokens, arch.d_vocab)}


# next_token: the default. legal_moves: cross-entropy to the uniform distribution over the legal
# next moves of Othello games (their true next-move distribution: the same minimum as next-token
# prediction on random games, without the noise of one sampled move per position).
OBJECTIVES = {
    "next_token": _Objective(arrays=lambda tokens, arch: tokens, make=lambda: None),
    "legal_moves": _Objective(arrays=_legal_move_arrays, make=SoftTargetNextMove),
}

# Not one of the step's outputs: Snakemake deletes a failed job's outputs, checkpoints/ included,
# so the checkpoints written so far are kept here too, for the rerun to put back.
RESUME_DIR = "resume"
LOG_FILE = "train_log.csv"


def _link(src: Path, dst: Path) -> None:
    """Make ``dst`` the file ``src`` (a hard link; a copy where links fail), atomically."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # renaming a link onto another link of the same file would do nothing
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _publish_checkpoints(kept_dir: Path, ckpt_dir: Path) -> None:
    """Make ``ckpt_dir`` hold this run's checkpoints and no others: a killed attempt's, which
    Snakemake deleted with its outputs, are put back; another run's left there are removed."""
    kept = {path.name: path for path in kept_dir.glob("*.safetensors")}
    for stale in ckpt_dir.glob("*.safetensors"):
        if stale.name not in kept:
            stale.unlink()
    for name, path in sorted(kept.items()):
        _link(path, ckpt_dir / name)


def run(
    architecture: dict,
    training: dict,
    tokens_path: Path,
    out_dir: Path,
    validation_path: Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> None:
    arch = Architecture.from_dict(architecture)
    objective = training.get("objective", "next_token")
    if objective not in OBJECTIVES:
        raise ValueError(f"training.objective: {objective!r}; allowed: {sorted(OBJECTIVES)}")
    cfg = TrainingConfig.from_dict({k: v for k, v in training.items() if k != "objective"})
    tokens = load_tokens(tokens_path)
    validation = load_tokens(validation_path) if validation_path is not None else None
    if (validation is None) != (cfg.eval_every is None):
        raise ValueError(
            "training.eval_every and --validation-tokens go together: give both or neither"
        )
    if tokens.shape[1] > arch.n_ctx:
        raise ValueError(
            f"{tokens_path}: sequences of length {tokens.shape[1]} exceed n_ctx={arch.n_ctx}"
        )
    if int(tokens.max()) >= arch.d_vocab:
        raise ValueError(f"{tokens_path}: token id {int(tokens.max())} >= d_vocab={arch.d_vocab}")
    seed_everything(cfg.seed)
    model = build_model(arch, seed=cfg.seed).to(pick_device(device))
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    resume_dir = out_dir / RESUME_DIR

    def on_checkpoint(step, model):
        kept = resume_dir / checkpoint_name(step)
        save_weights(model, kept)
        _link(kept, ckpt_dir / kept.name)

    start = time.perf_counter()
    columns = log_columns(validation is not None)
    with LiveTable(live_path(out_dir / LOG_FILE), columns) as live:
        loss_log = train(
            model,
            OBJECTIVES[objective].arrays(tokens, arch),
            cfg,
            on_checkpoint=on_checkpoint,
            progress=progress,
            resume_dir=resume_dir,
            on_log=live.append,
            desc=f"train {out_dir.name}",
            validation=validation,
            objective=OBJECTIVES[objective].make(),
        )
    seconds = time.perf_counter() - start
    _publish_checkpoints(resume_dir, ckpt_dir)
    write_table(loss_log, out_dir / LOG_FILE)
    live.remove()
    save_model(
        model,
        out_dir,
        extra={
            "source": "trained",
            "architecture": arch.to_dict(),
            "training": json.loads(json.dumps(training)),
            "dataset": {"path": str(tokens_path), "sha256": file_sha256(tokens_path)},
            "final_loss": float(loss_log["loss"].iloc[-1]),
            **(
                {"final_val_loss": float(loss_log["val_loss"].iloc[-1])}
                if validation is not None
                else {}
            ),
            "train_seconds": round(seconds, 2),
            "versions": package_versions(),
            "git_revision": git_revision(),
        },
    )
    shutil.rmtree(resume_dir)
    log.info(
        "trained %s in %.1f s, final loss %.3f", out_dir.name, seconds, loss_log["loss"].iloc[-1]
    )


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--architecture", required=True, type=json_object, help="Architecture as JSON"
    )
    parser.add_argument(
        "--training", required=True, type=json_object, help="TrainingConfig as JSON"
    )
    parser.add_argument("--tokens", dest="tokens_path", required=True, type=Path)
    parser.add_argument(
        "--validation-tokens",
        dest="validation_path",
        type=Path,
        default=None,
        help="held-out tokens for the validation loss (with training.eval_every)",
    )
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out-dir", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
