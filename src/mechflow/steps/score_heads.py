"""Score every attention head as previous-token, duplicate-token and induction head.

Reads the cached ``blocks.{L}.attn.hook_pattern`` of ``[BOS] + r + r`` sequences from an
activation store (which must come from this model and this token file) and writes a tidy table
``model, layer, head, score, value`` with score in previous_token / duplicate_token / induction.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.analysis.attention_scores import SCORES, HeadScoreAccumulator
from mechflow.analysis.inputs import (
    model_name,
    read_repeated_inputs,
)
from mechflow.artifacts import file_sha256, write_table
from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)

COLUMNS = ["model", "layer", "head", "score", "value"]


def pattern_hooks(n_layers: int) -> list[str]:
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]


def run(
    store: Path, model_dir: Path, tokens_path: Path, half_len: int, out: Path, *, batch_size: int
) -> pd.DataFrame:
    from mechflow.models.build import model_fingerprint
    from mechflow.store.reader import open_store

    cfg, tokens = read_repeated_inputs(model_dir, tokens_path, half_len)
    hooks = pattern_hooks(cfg["n_layers"])
    acts = open_store(
        store,
        expect={
            "model_hash": model_fingerprint(model_dir),
            "dataset_sha256": file_sha256(tokens_path),
            "hooks": hooks,
        },
    )
    if acts.n_sequences != len(tokens):
        raise ValueError(
            f"--store {store}: {acts.n_sequences} sequences, --tokens has {len(tokens)}"
        )
    name = model_name(model_dir)
    rows = []
    for layer, hook in enumerate(hooks):
        acc = HeadScoreAccumulator(half_len)
        for block in acts.iter_batches(hook, batch_size):  # batch head_index query_pos key_pos
            acc.update(block)
        result = acc.result()
        for score in SCORES:
            for head, value in enumerate(result[score].tolist()):
                rows.append((name, layer, head, score, value))
    df = pd.DataFrame(rows, columns=COLUMNS)
    write_table(df, out)
    best = df[df.score == "induction"].sort_values("value").iloc[-1]
    log.info("best induction head %d.%d: %.3f", best["layer"], best["head"], best["value"])
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    parser.add_argument("--store", required=True, type=Path, help="activation store (.zarr)")
    parser.add_argument(
        "--tokens", dest="tokens_path", required=True, type=Path, help="the cached [BOS]+r+r .npy"
    )
    parser.add_argument("--half-len", required=True, type=int, help="len(r)")
    parser.add_argument("--batch-size", required=True, type=int, help="sequences read at a time")
    add_runtime_flags(parser)
    parser.add_argument("--out", required=True, type=Path, help="head_scores.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
