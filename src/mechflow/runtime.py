"""Process-wide settings every step applies first: seeds, threads, device, offline mode, and
deterministic kernels.

torch is imported inside the functions so light steps (plots) do not pay for it.

Steps call these before any work so that a job copied out of ``snakemake -p`` behaves the same
when rerun by hand.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import random
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
# Read once, by the first matrix product (MKL) or the first cuBLAS handle: set before any work.
# MKL_CBWR "AUTO,STRICT": MKL's strict reproducibility mode, in which ?gemm gives the same bits
# for any thread count (by default it splits the reduction of a product such as a weight
# gradient, x^T @ grad over batch*pos rows, by threads, and 1 and 2 threads round differently).
# CUBLAS_WORKSPACE_CONFIG: what torch's deterministic mode needs for cuBLAS (CUDA >= 10.2).
DETERMINISTIC_ENV = {"MKL_CBWR": "AUTO,STRICT", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


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


def deterministic_env() -> None:
    """Export what MKL and cuBLAS read at their first call (a value already set is kept)."""
    for key, value in DETERMINISTIC_ENV.items():
        os.environ.setdefault(key, value)


def use_deterministic(enabled: bool = True) -> None:
    """Deterministic torch kernels: a run's bits no longer depend on how its threads interleave.

    On CPU this swaps the embedding backward's racy parallel accumulation for a deterministic
    one. With ``deterministic_env`` exported before the first matrix product (MKL) and before
    CUDA starts (cuBLAS), 1 and N threads agree as well, but for the case in
    ``mechflow.models.train.thread_invariant_length``. An op without a deterministic kernel
    raises instead of silently differing.
    """
    import torch

    if enabled:
        deterministic_env()
        torch.backends.cudnn.benchmark = False  # its autotuner may pick another kernel per run
    torch.use_deterministic_algorithms(enabled)


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
    """INFO and up to stderr, which a rule redirects to the job's log: the steps' messages and
    the progress lines of long loops (``mechflow.progress``; tqdm bars only on a terminal).

    A no-op when the root logger already has handlers (pytest's, a caller's own setup).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


DEVICES = ("auto", "cpu", "cuda")


def add_runtime_flags(parser: argparse.ArgumentParser, device: bool = False) -> None:
    """The flags through which a rule hands a step its machine: threads, and the device."""
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the job's cores)")
    if device:
        parser.add_argument("--device", default="auto", choices=DEVICES)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory(threshold: int = 256 << 20) -> bool:
    """Keep the memory glibc frees for reuse, instead of handing it back to the kernel.

    By default glibc unmaps or trims freed blocks above a threshold it adapts as it goes (at
    most 32 MiB), so a step's big tensors (a batch's logits over a 4096-token vocabulary are
    67 MB, its activations, their gradients) are faulted in again, 4 KiB at a time, pass after
    pass. Measured on the text model (4 layers, d_model 128, 16 x 256 tokens, 2 threads): a
    training step 0.49 -> 0.40 s; an SAE evaluation 13.1 -> 10.7 s, its kernel time 3.8 -> 0.7
    s; caching, 0.4 M page faults fewer per 30 batches. With both thresholds fixed, no block
    under ``threshold`` is unmapped or trimmed: the process keeps its peak heap. Process-wide,
    set by :func:`start` for every step; returns whether glibc took it (False where there is
    no ``mallopt``: musl, macOS).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # both: fixing either one stops glibc adapting the other (the trim threshold stays 128 KiB)
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 4 * threshold)
    )


def start(threads: int | None = None) -> None:
    """What every step does before any work: logging, offline mode, the thread pool, freed
    memory kept for reuse, and deterministic kernels (two runs of a step write the same bytes,
    on 1 thread or on 2).

    torch is configured only when the step uses it (it passed ``threads`` or imported torch);
    the environment for MKL and cuBLAS is exported either way, before either has run.
    """
    setup_logging()
    go_offline()
    deterministic_env()
    if not retain_freed_memory():
        logging.getLogger(__name__).debug("no glibc mallopt: freed memory goes back as usual")
    if threads is not None:
        set_threads(threads)
    if "torch" in sys.modules:
        use_deterministic()
