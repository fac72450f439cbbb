"""Track the induction-head phase change over a model's training checkpoints.

For every ``step_<N>.safetensors`` in ``--checkpoints-dir`` writes ``model, step, metric, value``:
``induction_score`` (best head in layers >= 1; layer 0 for a one-layer model) and
``previous_token_score`` (best layer-0 head) from attention on ``--eval-tokens`` ([BOS] + r + r),
``first_half_loss`` and ``repeated_half_loss`` on the same sequences, and ``icl_score`` (Olsson et
al. 2022): loss at predicted position ``--icl-late`` minus loss at ``--icl-early`` on
``--icl-tokens`` (a sample of the training distribution). Olsson et al. compare token 500 with
token 50 of 512; for 64-token contexts the schema's defaults compare position 60 with position 5,
about the same fractions of the context.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.analysis.inputs import check_repeated, check_tokens, model_name, read_model_config
from mechflow.artifacts import write_table
from mechflow.progress import Progress
from mechflow.runtime import add_runtime_flags, pick_device
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)

COLUMNS = ["model", "step", "metric", "value"]


def run(
    model_dir: Path,
    checkpoints_dir: Path,
    eval_tokens_path: Path,
    icl_tokens_path: Path,
    half_len: int,
    out: Path,
    *,
    batch_size: int,
    icl_early: int,
    icl_late: int,
    icl_sequences: int,
    device: str = "auto",
) -> pd.DataFrame:
    from mechflow.analysis.losses import resolve_position
    from mechflow.experiments.induction.phase_change import METRICS, checkpoint_metrics
    from mechflow.models.checkpoints import iter_checkpoint_models, list_checkpoints

    cfg = read_model_config(model_dir)
    checkpoints = list_checkpoints(checkpoints_dir)
    fits = {"d_vocab": cfg["d_vocab"], "n_ctx": cfg["n_ctx"]}
    eval_tokens = check_tokens(eval_tokens_path, **fits, flag="--eval-tokens")
    check_repeated(eval_tokens, half_len, f"--eval-tokens {eval_tokens_path}")
    icl_tokens = check_tokens(icl_tokens_path, **fits, flag="--icl-tokens")[:icl_sequences]
    icl_len = icl_tokens.shape[1]
    early, late = (resolve_position(p, icl_len) for p in (icl_early, icl_late))
    if late <= early:
        raise ValueError(f"--icl-late ({icl_late} -> {late}) must come after --icl-early ({early})")
    dev = pick_device(device)
    name = model_name(model_dir)
    rows = []
    models = iter_checkpoint_models(model_dir, checkpoints, device=dev)
    bar = Progress(
        models, total=len(checkpoints), desc=f"phase change {name}", unit="checkpoint", logger=log
    )
    for step, model in bar:
        metrics = checkpoint_metrics(
            model,
            eval_tokens,
            icl_tokens,
            half_len=half_len,
            batch_size=batch_size,
            icl_early=early,
            icl_late=late,
            device=dev,
        )
        rows += [(name, step, metric, metrics[metric]) for metric in METRICS]
        log.info(
            "step %d: induction %.3f, repeated-half loss %.3f, icl %.3f",
            step,
            metrics["induction_score"],
            metrics["repeated_half_loss"],
            metrics["icl_score"],
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    write_table(df, out)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    parser.add_argument("--checkpoints-dir", required=True, type=Path)
    parser.add_argument(
        "--eval-tokens", dest="eval_tokens_path", required=True, type=Path, help="[BOS]+r+r .npy"
    )
    parser.add_argument(
        "--icl-tokens",
        dest="icl_tokens_path",
        required=True,
        type=Path,
        help="training-distribution sample .npy",
    )
    parser.add_argument("--half-len", required=True, type=int, help="len(r) of --eval-tokens")
    parser.add_argument("--icl-early", required=True, type=int, help="predicted position")
    parser.add_argument("--icl-late", required=True, type=int, help="predicted position; -1 = last")
    parser.add_argument(
        "--icl-sequences", required=True, type=int, help="first sequences of --icl-tokens read"
    )
    parser.add_argument("--batch-size", required=True, type=int)
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out", required=True, type=Path, help="phase_change.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
