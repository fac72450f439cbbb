"""Measure next-token loss at each position of ``[BOS] + r + r`` sequences.

Writes ``model, pos, half, loss``: ``pos`` is the predicted token's position (1..2*half_len),
``half`` is ``first`` (pos <= half_len) or ``second`` (the repeated half, which induction heads
predict), ``loss`` the mean over sequences in nats.
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

COLUMNS = ["model", "pos", "half", "loss"]


def run(
    model_dir: Path,
    tokens_path: Path,
    half_len: int,
    out: Path,
    *,
    batch_size: int,
    device: str = "auto",
) -> pd.DataFrame:
    from mechflow.analysis.losses import half_losses, loss_by_position
    from mechflow.models.build import load_model

    _, tokens = read_repeated_inputs(model_dir, tokens_path, half_len)
    dev = pick_device(device)
    model = load_model(model_dir, device=dev)
    loss = loss_by_position(model, tokens, batch_size, dev)
    name = model_name(model_dir)
    df = pd.DataFrame(
        {
            "model": name,
            "pos": range(1, 2 * half_len + 1),
            "half": ["first"] * half_len + ["second"] * half_len,
            "loss": loss.tolist(),
        },
        columns=COLUMNS,
    )
    write_table(df, out)
    halves = half_losses(loss, half_len)
    log.info(
        "%s: first-half loss %.3f, repeated-half loss %.3f", name, halves["first"], halves["second"]
    )
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir", "repeated_tokens")
    parser.add_argument("--batch-size", required=True, type=int)
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out", required=True, type=Path, help="loss_by_position.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
