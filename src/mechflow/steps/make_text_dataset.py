"""Build a token dataset from local text (the Python standard library's source, or a file or
directory): split it by file, train a byte-level BPE tokenizer on the train split, and write
both splits as ``(seq, pos)`` int32 ``.npy`` rows, the ``tokenizer.json`` and the provenance.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.artifacts import write_json
from mechflow.data.text import (
    TextSpec,
    build_text_dataset,
    save_tokenizer,
    set_tokenizer_threads,
)
from mechflow.data.tokens import save_tokens
from mechflow.steps import json_object, parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(
    spec: dict,
    out: Path,
    validation_out: Path,
    tokenizer_out: Path,
    provenance_out: Path,
    tokenizer_threads: int,
) -> None:
    set_tokenizer_threads(tokenizer_threads)  # before the first call into tokenizers
    dataset = build_text_dataset(TextSpec.from_dict(spec))
    provenance = dataset.provenance
    provenance["tokenizer"]["sha256"] = save_tokenizer(dataset.tokenizer, tokenizer_out)
    for split, path in (("train", out), ("validation", validation_out)):
        save_tokens(dataset.tokens[split], path)
        log.info("wrote %s: %d sequences x %d positions", path, *dataset.tokens[split].shape)
    write_json(provenance, provenance_out)  # last: it names the files written before it


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--spec", required=True, type=json_object, help="the dataset's config entry as JSON"
    )
    parser.add_argument("--out", required=True, type=Path, help="train split .npy")
    parser.add_argument("--validation-out", required=True, type=Path, help="validation .npy")
    parser.add_argument("--tokenizer-out", required=True, type=Path, help="tokenizer.json")
    parser.add_argument("--provenance-out", required=True, type=Path, help="provenance .json")
    # A machine flag (the job's cores), so it keeps a default; its own dest keeps torch unloaded
    # (runtime.start sets torch's threads only when given `threads`).
    parser.add_argument(
        "--threads", dest="tokenizer_threads", type=int, default=1, help="tokenizers threads"
    )
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
