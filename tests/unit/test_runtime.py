"""What every step sets up before it works: here, freed memory kept for reuse."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Allocate and touch 64 MiB, free it: how much of it does the process still hold?
FREE_64_MIB = """
import sys
import numpy as np
import psutil
from mechflow import runtime
if sys.argv[1] == "start":
    runtime.start()
a = np.ones(16 << 20, np.float32)
held = psutil.Process().memory_info().rss
del a
print(held - psutil.Process().memory_info().rss)
"""


def bytes_returned_on_free(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", FREE_64_MIB, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_steps_keep_freed_memory_for_reuse():
    """glibc hands a freed 64 MiB block back to the kernel (the next one is faulted in again,
    page by page); after ``runtime.start`` the heap keeps it."""
    assert bytes_returned_on_free("default") > 60 << 20
    assert bytes_returned_on_free("start") < 4 << 20
