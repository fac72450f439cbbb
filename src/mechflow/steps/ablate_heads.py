"""Zero- and mean-ablate every attention head and measure the loss on the repeated half.

Writes ``model, layer, head, ablation, loss, clean_loss, delta`` on ``[BOS] + r + r`` sequences:
``loss`` is the mean next-token loss over the repeated half with the head's ``hook_z`` set to 0
(``zero``) or to its per-position mean over the sequences (``mean``); ``delta = loss - clean_loss``.
All ablations of a batch run in one forward pass over replicated copies of the batch
(``--ablations-per-pass`` bounds the copies, and so memory).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.analysis.inputs import (
    model_name,
    read_repeated_inputs,
)
from mechflow.artifacts import write_table
from mechflow.runtime import add_runtime_flags, pick_device
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)

COLUMNS = ["model", "layer", "head", "ablation", "loss", "clean_loss", "delta"]


def run(
    model_dir: Path,
    tokens_path: Path,
    half_len: int,
    out: Path,
    *,
    batch_size: int,
    device: str = "auto",
    ablations_per_pass: int = 0,
) -> pd.DataFrame:
    from mechflow.analysis.ablation import head_ablation_losses
    from mechflow.models.build import load_model

    if ablations_per_pass < 0:
        raise ValueError(f"--ablations-per-pass must be >= 0, got {ablations_per_pass}")
    _, tokens = read_repeated_inputs(model_dir, tokens_path, half_len)
    dev = pick_device(device)
    model = load_model(model_dir, device=dev)
    clean, losses = head_ablation_losses(
        model, tokens, half_len, batch_size, dev, ablations_per_pass=ablations_per_pass or None
    )
    name = model_name(model_dir)
    rows = [
        (name, a.layer, a.head, a.kind, loss, clean, loss - clean) for a, loss in losses.items()
    ]
    df = pd.DataFrame(rows, columns=COLUMNS)
    write_table(df, out)
    worst = df.sort_values("delta").iloc[-1]
    log.info(
        "clean loss %.3f; largest increase %.3f (%s-ablating head %d.%d)",
        clean,
        worst["delta"],
        worst["ablation"],
        worst["layer"],
        worst["head"],
    )
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir", "repeated_tokens")
    parser.add_argument(
        "--batch-size",
        type=int,
        required=True,
        help="sequences per pass (each replicated per ablation)",
    )
    parser.add_argument(
        "--ablations-per-pass", type=int, default=0, help="copies per forward pass; 0 = all"
    )
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out", required=True, type=Path, help="head_ablation.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
