"""Experiments are units: each paper is a package here and a rule file beside the others.

Adding one touches its own files and one line, the name in ``EXPERIMENTS`` below:

- ``mechflow/experiments/<name>/workflow.py``: a torch-free ``Wiring`` (an :class:`Experiment`)
  with its config checks, targets, the hooks it reads from shared stores and its rules' params;
- ``workflow/rules/<name>.smk``: all of its rules, its plot rules included;
- ``workflow/schemas/<name>.schema.yaml``: its config section ``experiments.<name>``;
- ``workflow/report/<name>/``: its figure captions; its tables under ``results/<name>/``.
"""

from __future__ import annotations

import importlib
from typing import Any

from mechflow.experiments.base import Experiment

EXPERIMENTS = (
    "induction", "grokking", "superposition", "saes", "language_model", "ioi", "othello",
)  # fmt: skip


def load_experiments(config: dict[str, Any], names=EXPERIMENTS) -> dict[str, Experiment]:
    """Every registered experiment's wiring for this config (configured or not: rules exist)."""
    return {
        name: importlib.import_module(f"mechflow.experiments.{name}.workflow").Wiring(config)
        for name in names
    }
