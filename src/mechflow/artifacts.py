"""Writing artifacts so that a killed job never leaves a file a later step could take as finished.

Every file is written to a temporary sibling and renamed into place (atomic on POSIX), and
every artifact can be fingerprinted for provenance. Weights are read through
:func:`load_safetensors`, which names the file it refuses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    import torch


class DamagedArtifactError(RuntimeError):
    """A file a step reads is truncated, altered, or not the file its writer recorded."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the artifact the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Tidy tables are CSV: small, diffable, readable by anything."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Only an empty cell is missing (what ``write_table`` writes for NaN): text such as a
    token ``None`` or ``nan`` stays text."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def save_safetensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> str:
    """Write a safetensors file atomically and return its sha256 (for a sidecar to record).

    Through :func:`atomic_path`, so the file gets the umask's mode: safetensors alone leaves 0600.
    """
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        digest = file_sha256(tmp)  # re-read from the page cache: ~0.6 s/GB
    return digest


def load_safetensors(
    path: str | os.PathLike, device: torch.device | str = "cpu", *, sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or an error naming the file (never unpickles).

    ``sha256``, when the writer recorded one, is checked first: safetensors itself only notices
    a truncated file or a broken header, not an altered byte.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    if sha256 is not None:
        found = file_sha256(path)
        if found != sha256:
            raise DamagedArtifactError(
                f"{path}: sha256 {found[:12]}... differs from the {sha256[:12]}... recorded "
                "when it was written (altered or damaged): rerun the step that writes it"
            )
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise DamagedArtifactError(
            f"{path}: not a readable safetensors file ({err}): rerun the step that writes it"
        ) from err


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def config_hash(obj) -> str:
    """Stable short hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def package_versions(names=("mechflow", "torch", "transformer-lens", "zarr", "numpy")) -> dict:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(start: str | os.PathLike | None = None) -> str:
    """The git commit of the workflow checkout (suffixed ``-dirty`` when modified), or 'unknown'."""
    cwd = Path(start) if start else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
