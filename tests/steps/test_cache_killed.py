"""A cache_activations process killed with SIGKILL midway: readers refuse it, a rerun completes it."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mechflow.data.induction import repeated_random
from mechflow.data.tokens import save_tokens
from mechflow.models.build import build_model, save_model
from mechflow.models.config import Architecture
from mechflow.steps import cache_activations
from mechflow.store.reader import IncompleteStoreError, open_store

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def rows_written(store):
    try:
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0
    return attrs.get("rows_written") or 0


@pytest.mark.slow
def test_sigkill_midway_then_rerun_completes(tmp_path):
    arch = Architecture(
        n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=64, d_vocab=128, attn_only=True
    )
    save_model(build_model(arch, seed=0), tmp_path / "model")
    tokens = tmp_path / "tokens.npy"
    save_tokens(repeated_random(n_sequences=3000, half_len=31, d_vocab=128, seed=0), tokens)
    args = [
        "--model-dir",
        str(tmp_path / "model"),
        "--tokens",
        str(tokens),
        "--batch-size",
        "25",
        "--dtype",
        "float32",
        "--compression",
        "zstd",
        "--threads",
        "1",
    ]
    args += [flag for hook in HOOKS for flag in ("--hook", hook)]
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mechflow.steps.cache_activations", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while rows_written(killed) < 100 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = rows_written(killed)
    assert 0 < partial < 3000, f"kill landed outside the write (rows_written={partial})"

    with pytest.raises(IncompleteStoreError):
        open_store(killed)

    cache_activations.main([*args, "--out", str(killed)])
    clean = tmp_path / "clean.zarr"
    cache_activations.main([*args, "--out", str(clean)])
    resumed, reference = open_store(killed), open_store(clean)
    for hook in HOOKS:
        np.testing.assert_array_equal(resumed.numpy(hook), reference.numpy(hook))
    np.testing.assert_array_equal(resumed.tokens(), reference.tokens())
