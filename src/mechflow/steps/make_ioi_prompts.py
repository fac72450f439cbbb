"""Draw the IOI experiment's fixed evaluation sample of one model (``prompts.npz``).

A model trained here reads the word-level vocabulary of its ``ioi`` dataset, and its training
rows (``--training-tokens``) are never drawn; a pretrained model reads its own tokenizer
(``--tokenizer``: the ``tokenizer.json`` saved beside it), every name, place and object a single
token of it. Splits: mechflow.experiments.ioi.prompt_set.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.steps import json_object, parse_and_run, step_parser

log = logging.getLogger(__name__)


def vocabulary_for(spec: dict, tokenizer: Path | None):
    """The word-level vocabulary of ``spec``, or a pretrained tokenizer read as one."""
    from mechflow.experiments.ioi.prompts import TextVocabulary, vocabulary_of

    if tokenizer is None:
        return vocabulary_of(spec)
    from mechflow.data.text import EOT, load_tokenizer

    loaded = load_tokenizer(tokenizer)
    bos = loaded.token_to_id(EOT)
    if bos is None:
        raise ValueError(f"--tokenizer {tokenizer}: no {EOT} token (the BOS of GPT-2 models)")
    return TextVocabulary(loaded, bos)


def run(
    spec: dict,
    out: Path,
    *,
    prompts: int,
    aligned_prompts: int,
    seed: int,
    seq_len: int | None = None,
    training_tokens: Path | None = None,
    tokenizer: Path | None = None,
) -> None:
    from mechflow.data.tokens import load_tokens
    from mechflow.experiments.ioi.prompt_set import build_prompt_set, save_prompt_set

    vocabulary = vocabulary_for(spec, tokenizer)
    rows = None if training_tokens is None else load_tokens(training_tokens)
    if rows is not None and seq_len is None:
        seq_len = rows.shape[1] - 1  # as the training rows hold them: prompt, answer, padding
    prompt_set = build_prompt_set(
        spec, vocabulary, n=prompts, n_aligned=aligned_prompts, seed=seed, seq_len=seq_len,
        training_rows=rows,
    )  # fmt: skip
    save_prompt_set(prompt_set, out)
    for split, drawn in prompt_set.prompts.items():
        log.info("%s: %d prompts x %d positions", split, *drawn.tokens.shape)


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--spec", required=True, type=json_object, help="the ioi dataset spec")
    parser.add_argument("--prompts", required=True, type=int, help="prompts per split")
    parser.add_argument("--aligned-prompts", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--seq-len", type=int, help="pad to this length (default: the longest)")
    parser.add_argument("--training-tokens", type=Path, help="rows never drawn (.npy)")
    parser.add_argument("--tokenizer", type=Path, help="a pretrained model's tokenizer.json")
    parser.add_argument("--out", required=True, type=Path, help="prompts.npz")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
