"""Import a pretrained TransformerLens model (e.g. ``gpt2``) from local files into mechflow's layout.

Only the Hugging Face cache or a local ``save_pretrained`` directory is read; nothing is
downloaded. Without weights the job fails at once with a message saying where to put them. The
model's tokenizer, when it is here too, is saved beside the weights (``tokenizer.json``), so
``Run.tokenizer`` decodes what the model reads and writes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mechflow.artifacts import git_revision, package_versions
from mechflow.models.build import TOKENIZER_FILE, PretrainedUnavailable, load_pretrained, save_model
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(name: str, path: str | None, out_dir: Path) -> None:
    from mechflow.data.text import CorpusError, read_pretrained_tokenizer, save_tokenizer

    model = load_pretrained(name, path)
    tokenizer_out = out_dir / TOKENIZER_FILE
    try:
        tokenizer = read_pretrained_tokenizer(out_dir.name, name, path)
    except CorpusError as err:  # the weights are enough to analyse token ids
        log.warning("no tokenizer saved with the model (texts will show as token ids): %s", err)
        tokenizer_out.unlink(missing_ok=True)  # never a stale one from an earlier import
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_tokenizer(tokenizer.tokenizer, tokenizer_out)
    save_model(
        model,
        out_dir,
        extra={
            "source": "pretrained",
            "pretrained": {"name": name, "path": path},
            "versions": package_versions(),
            "git_revision": git_revision(),
        },
    )
    log.info("imported %s into %s", name, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--name", required=True, help="TransformerLens model name, e.g. gpt2")
    parser.add_argument("--path", default=None, help="local Hugging Face model directory")
    parser.add_argument("--out-dir", required=True, type=Path)
    try:
        parse_and_run(parser, run, argv)
    except PretrainedUnavailable as err:  # not a bug: one paragraph saying what to do, no traceback
        log.error("%s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
