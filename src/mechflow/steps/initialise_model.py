"""Save a model at its random initialisation, never trained (a control for probes and patching).

Writes ``model.safetensors`` + ``config.json`` like ``train_model`` does, so every step that
reads a model reads this one. With a trained model's architecture and seed it has that model's
step-0 weights (``train_model`` builds its model with the same call).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.artifacts import git_revision, package_versions
from mechflow.models.build import build_model, save_model
from mechflow.models.config import Architecture
from mechflow.runtime import seed_everything
from mechflow.steps import json_object, parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(architecture: dict, seed: int, out_dir: Path) -> None:
    arch = Architecture.from_dict(architecture)
    seed_everything(seed)
    model = build_model(arch, seed=seed)
    save_model(
        model,
        out_dir,
        extra={
            "source": "initialised",
            "architecture": arch.to_dict(),
            "seed": seed,
            "versions": package_versions(),
            "git_revision": git_revision(),
        },
    )
    log.info("saved %s at its initialisation (seed %d)", out_dir.name, seed)


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--architecture", required=True, type=json_object, help="Architecture as JSON"
    )
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--out-dir", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
