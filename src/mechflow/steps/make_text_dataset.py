"""Build a token dataset from local text (the Python standard library's source, or a file or
directory): split it by file, train a byte-level BPE tokenizer on the train split (or read a
pretrained model's own tokenizer, never downloaded), and write both splits as ``(seq, pos)``
int32 ``.npy`` rows, the ``tokenizer.json`` and the provenance.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.artifacts import write_json
from mechflow.data.text import (
    TextSpec,
    build_text_dataset,
    read_pretrained_tokenizer,
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
    tokenizer_name: str | None = None,
    tokenizer_path: str | None = None,
) -> None:
    set_tokenizer_threads(tokenizer_threads)  # before the first call into tokenizers
    text_spec = TextSpec.from_dict(spec)
    pretrained = None
    if text_spec.tokenizer is not None:
        if (tokenizer_name is None) == (tokenizer_path is None):
            raise ValueError(
                f"--spec reads the tokenizer of models.{text_spec.tokenizer}: give its "
                "--tokenizer-path (a save_pretrained directory) or else its --tokenizer-name"
            )
        pretrained = read_pretrained_tokenizer(
            text_spec.tokenizer, tokenizer_name or text_spec.tokenizer, tokenizer_path
        )
    elif tokenizer_name is not None or tokenizer_path is not None:
        raise ValueError("--tokenizer-name/--tokenizer-path: --spec has no tokenizer (null)")
    dataset = build_text_dataset(text_spec, pretrained)
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
    # the spec's `tokenizer` model: its local directory, or its name (read from the HF cache)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tokenizer-path", help="the pretrained model's save_pretrained dir")
    source.add_argument("--tokenizer-name", help="the pretrained model's TransformerLens name")
    # A machine flag (the job's cores), so it keeps a default; its own dest keeps torch unloaded
    # (runtime.start sets torch's threads only when given `threads`).
    parser.add_argument(
        "--threads", dest="tokenizer_threads", type=int, default=1, help="tokenizers threads"
    )
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
