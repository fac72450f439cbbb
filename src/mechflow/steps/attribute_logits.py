"""Direct logit attribution: each component's share of the correct next token's logit.

The final residual stream is the sum of the embeddings, every head's output, each layer's
attention bias and each MLP's output; scaled by the final LayerNorm's cached scale (exact, not an
approximation) and dotted with the unembedding of the correct next token, each gets its share,
and the shares (with the LayerNorm bias term) sum to the logit minus the unembedding bias
(``mechflow.analysis.logit_attribution``). Writes ``model, component, kind, layer, head, mean,
std, mean_abs`` over every predicted position of ``--sequences`` sequences spread evenly over
``--tokens``.
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
    from mechflow.analysis.logit_attribution import logit_attribution_table

    dev = pick_device(device)
    model, tokens = load_model_and_tokens(model_dir, tokens_path, dev, sequences)
    table = logit_attribution_table(model, tokens, batch_size, device=dev)
    table.insert(0, "model", model_name(model_dir))
    write_table(table, out)
    top = table.reindex(table["mean"].abs().sort_values(ascending=False).index).head(5)
    log.info(
        "largest mean attributions: %s",
        ", ".join(f"{r.component} {r.mean:+.3f}" for r in top.itertuples()),
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir", "text_sample")
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out", required=True, type=Path, help="logit_attribution.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
