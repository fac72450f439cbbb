"""Process-wide settings every step applies first: seeds, threads, device, offline mode.

torch is imported inside the functions so light steps (plots) do not pay for it.

Steps call these before any work so that a job copied out of ``snakemake -p`` behaves the same
when rerun by hand.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for explicit sampling."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int) -> None:
    """Match torch's thread pool to the cores Snakemake gave the job (oversubscription stalls)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present and not overridden; ``cpu``/``cuda`` force a choice."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return torch.device(requested)


def go_offline() -> None:
    """Make hub look-ups fail at once instead of retrying DNS (~23 s) on machines without network."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


DEVICES = ("auto", "cpu", "cuda")


def add_runtime_flags(parser: argparse.ArgumentParser, device: bool = False) -> None:
    """The flags through which a rule hands a step its machine: threads, and the device."""
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the job's cores)")
    if device:
        parser.add_argument("--device", default="auto", choices=DEVICES)


def start(threads: int | None = None) -> None:
    """What every step does before any work: logging, offline mode, the thread pool."""
    setup_logging()
    go_offline()
    if threads is not None:
        set_threads(threads)
