"""Score a language model and three baselines on the same held-out text.

Writes ``name, kind, loss, margin, smoothing, tokens``: the model's mean next-token loss on
``--sequences`` validation sequences spread evenly over the split (its first rows are its first
files only), and on the same tokens the uniform (ln V, V the
tokenizer's vocabulary), unigram and bigram baselines fitted on the training split
(``mechflow.analysis.baselines``); ``margin`` is how far the model's loss lies below each.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.analysis.inputs import check_tokens, model_name, read_model_config
from mechflow.artifacts import write_table
from mechflow.data.tokens import spread_rows
from mechflow.runtime import add_runtime_flags, pick_device
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)

COLUMNS = ["name", "kind", "loss", "margin", "smoothing", "tokens"]


def vocabulary_size(tokenizer_path: Path) -> int:
    from tokenizers import Tokenizer

    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"--tokenizer: not found: {tokenizer_path}")
    return Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()


def run(
    model_dir: Path,
    train_path: Path,
    validation_path: Path,
    tokenizer_path: Path,
    out: Path,
    *,
    sequences: int,
    batch_size: int,
    unigram_alpha: float,
    bigram_lambda: float,
    device: str = "auto",
) -> pd.DataFrame:
    from mechflow.analysis.baselines import baseline_losses
    from mechflow.models.build import load_model
    from mechflow.models.train import validation_loss

    cfg = read_model_config(model_dir)
    fits = {"d_vocab": cfg["d_vocab"], "n_ctx": cfg["n_ctx"]}
    train = check_tokens(train_path, flag="--tokens", **fits)
    held_out = check_tokens(validation_path, flag="--validation-tokens", **fits)
    held_out = spread_rows(held_out, sequences)
    d_vocab = vocabulary_size(tokenizer_path)
    baselines = baseline_losses(train, held_out, d_vocab, alpha=unigram_alpha, lam=bigram_lambda)
    dev = pick_device(device)
    import torch

    model = load_model(model_dir, device=dev)
    loss = validation_loss(model, torch.from_numpy(held_out.astype("int64")), batch_size)
    n_tokens = held_out.shape[0] * (held_out.shape[1] - 1)
    rows = [
        {"name": model_name(model_dir), "kind": "model", "loss": loss, "margin": 0.0},
        *(
            {"name": b.baseline, "kind": "baseline", "loss": b.loss, "margin": b.loss - loss}
            for b in baselines.itertuples()
        ),
    ]
    smoothing = dict(zip(baselines["baseline"], baselines["smoothing"], strict=True))
    df = pd.DataFrame(rows)
    df["smoothing"] = df["name"].map(smoothing).fillna("")
    df["tokens"] = n_tokens
    df = df[COLUMNS]
    write_table(df, out)
    log.info(
        "%s: validation loss %.3f; below %s",
        rows[0]["name"],
        loss,
        ", ".join(f"{r['name']} by {r['margin']:.3f}" for r in rows[1:]),
    )
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    parser.add_argument("--tokens", dest="train_path", required=True, type=Path, help="train .npy")
    parser.add_argument("--validation-tokens", dest="validation_path", required=True, type=Path)
    parser.add_argument("--tokenizer", dest="tokenizer_path", required=True, type=Path)
    parser.add_argument("--sequences", required=True, type=int, help="validation sequences")
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--unigram-alpha", required=True, type=float)
    parser.add_argument("--bigram-lambda", required=True, type=float)
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out", required=True, type=Path, help="losses.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
