"""Apply the logit lens to a language model on held-out text.

Each layer boundary's residual stream (0: the embeddings; the last: the model's final stream)
goes through the final LayerNorm, recomputed on that stream, and the unembedding
(``mechflow.analysis.logit_lens``). Writes ``model, layer, hook, loss, kl_to_final,
top1_agreement, top1_accuracy``, averaged over every predicted position of
``--sequences`` sequences spread evenly over ``--tokens``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.analysis.inputs import load_model_and_tokens, model_name
from mechflow.artifacts import write_table
from mechflow.runtime import add_runtime_flags, pick_device
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(
    model_dir: Path,
    tokens_path: Path,
    out: Path,
    *,
    sequences: int,
    batch_size: int,
    device: str = "auto",
) -> pd.DataFrame:
    from mechflow.analysis.logit_lens import logit_lens_table

    dev = pick_device(device)
    model, tokens = load_model_and_tokens(model_dir, tokens_path, dev, sequences)
    table = logit_lens_table(model, tokens, batch_size, device=dev)
    table.insert(0, "model", model_name(model_dir))
    write_table(table, out)
    for row in table.itertuples():
        log.info("layer %d: loss %.3f, KL to final %.3f", row.layer, row.loss, row.kl_to_final)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir", "text_sample")
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out", required=True, type=Path, help="logit_lens.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
