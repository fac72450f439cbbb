"""A cache_activations process killed with SIGKILL midway: readers refuse it, a rerun completes it.

The rerun uses another --batch-size (a machine setting): it resumes the partial store in its own
chunk layout, and the result equals an uninterrupted run with a third batch size.
"""

import json
import logging
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
def test_sigkill_midway_then_rerun_completes(tmp_path, caplog):
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
        "--dtype",
        "float32",
        "--compression",
        "zstd",
        "--threads",
        "1",
    ]
    args += [flag for hook in HOOKS for flag in ("--hook", hook)]
    killed = tmp_path / "killed.zarr"
    step = [sys.executable, "-m", "mechflow.steps.cache_activations", *args]
    proc = subprocess.Popen(
        [*step, "--batch-size", "25", "--out", str(killed)],
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

    # 520-row chunks (~16 MiB), which none of the batch sizes 25, 16 and 64 divides
    with caplog.at_level(logging.INFO, logger="mechflow.store.writer"):
        cache_activations.main([*args, "--batch-size", "16", "--out", str(killed)])
    assert f"resuming at row {partial} of 3000" in caplog.text  # not deleted and redone
    clean = tmp_path / "clean.zarr"
    cache_activations.main([*args, "--batch-size", "64", "--out", str(clean)])
    resumed, reference = open_store(killed), open_store(clean)
    assert resumed.provenance["config_hash"] == reference.provenance["config_hash"]
    # the chunks written before the kill are in the manifest too, as the clean run's are
    manifests = [json.loads((s / "manifest.json").read_text()) for s in (killed, clean)]
    assert manifests[0] == manifests[1]
    resumed.verify()
    for hook in HOOKS:
        assert resumed.array(hook).chunks == reference.array(hook).chunks
        np.testing.assert_array_equal(resumed.numpy(hook), reference.numpy(hook))
    np.testing.assert_array_equal(resumed.tokens(), reference.tokens())
