"""Shared by the workflow tests: a private copy of the workflow and a Snakemake runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def copy_workflow(dest: Path) -> Path:
    """A private copy of the workflow (not results/) so tests never touch the user's outputs."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Snakefile", dest)
    shutil.copy(ROOT / "environment.yml", dest)
    shutil.copytree(
        ROOT / "workflow", dest / "workflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "config", dest / "config")
    return dest


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: int = 1500, env: dict | None = None
):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        **(env or {}),
    }
    proc = subprocess.run(
        [*SNAKEMAKE, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc
