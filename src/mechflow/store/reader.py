"""Open activation stores written by :mod:`mechflow.store.writer`, refusing unfinished, damaged
or foreign ones.

A store is trusted only as far as its manifest (every chunk file's size and crc32c, written
before ``complete``): :func:`open_store` checks that every chunk file is there with its size,
and every whole chunk read through :class:`ActivationStore` is checked against its checksum
(:class:`DamagedStoreError` names the file and the array). Arrays are always reached by name
from the hook list in the attrs, through the consolidated metadata, never by listing the group:
Snakemake drops a ``.snakemake_timestamp`` file into ``directory()`` outputs, and zarr warns
about it when iterating members.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from mechflow.artifacts import DamagedArtifactError
from mechflow.store.writer import (
    ATTRS_KEY,
    CHECKSUM,
    LAYOUT_KEYS,
    MANIFEST_FORMAT,
    MATCH_KEYS,
    TOKENS,
    Damage,
    chunk_damage,
    chunk_problem,
    split_chunk_key,
)

if TYPE_CHECKING:
    import xarray
    from zarr.core.buffer import Buffer, BufferPrototype

log = logging.getLogger(__name__)

Rows = slice | int | Sequence[int] | np.ndarray
# Defaults in the class body, where the method ``torch`` shadows the module.
_FLOAT32 = torch.float32
# What ``expect`` may name: the content keys, the names beside their hashes, and the layout keys
# (accepted, never compared).
EXPECT_KEYS = frozenset({*MATCH_KEYS, *LAYOUT_KEYS, "model", "dataset", "seed", "config_hash"})
# Content hashes and the provenance key naming what each is the hash of.
_NAMED_HASHES = {"model_hash": "model", "dataset_sha256": "dataset"}


class IncompleteStoreError(RuntimeError):
    """The path is not a finished activation store (killed run, still writing, not a store, or
    written by older code without a chunk manifest)."""


class DamagedStoreError(IncompleteStoreError, DamagedArtifactError):
    """A finished store whose files are not the ones its writer recorded: a chunk file missing,
    truncated or altered (``array`` and ``chunk`` name it), or its manifest."""

    def __init__(self, message: str, *, array: str | None = None, chunk: Path | None = None):
        self.array, self.chunk = array, chunk
        super().__init__(message)


class ProvenanceMismatchError(RuntimeError):
    """The store was made from another model, dataset or settings than the caller expects.

    For a content hash, ``what`` (``model``/``dataset``) and the names beside the hashes make
    the message say what the store was made from and what was expected.
    """

    def __init__(
        self,
        path: Path,
        key: str,
        expected: Any,
        found: Any,
        *,
        what: str | None = None,
        found_name: str | None = None,
        expected_name: str | None = None,
    ):
        self.key, self.expected, self.found = key, expected, found
        if what is None:
            detail = f"expected {expected!r}, found {found!r}"
        else:
            detail = (
                f"made from {_described(what, found_name, found)}, "
                f"expected {_described(what, expected_name, expected)}"
            )
        super().__init__(f"{path}: provenance {key!r} does not match: {detail}")


def _described(what: str, name: str | None, digest: Any) -> str:
    """``model 'attn_only_1l' (hash 082a1c5e82ce...)``, or ``model hash 082a...`` unnamed."""
    text = str(digest)
    short = f"{text[:12]}..." if len(text) > 16 else text
    return f"{what} {name!r} (hash {short})" if name else f"{what} hash {short}"


def _damaged(root: Path, damage: Damage) -> DamagedStoreError:
    return DamagedStoreError(
        f"{damage.chunk}: chunk of array {damage.array!r} {damage.problem}; the activation "
        f"store {root} is damaged: rerun the step that writes it",
        array=damage.array,
        chunk=damage.chunk,
    )


class _VerifiedStore(LocalStore):
    """A LocalStore that checks every whole-chunk read against the manifest's entry.

    Byte-range reads (zarr makes them only inside sharded arrays, which stores do not use)
    pass through unchecked.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        read_only: bool = True,
        entries: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(root, read_only=read_only)
        self.entries: Mapping[str, tuple[int, int]] = entries or {}

    def with_read_only(self, read_only: bool = False) -> _VerifiedStore:
        return type(self)(self.root, read_only=read_only, entries=self.entries)

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: Any = None,
    ) -> Buffer | None:
        entry = self.entries.get(key)
        if entry is None or byte_range is not None:
            return await super().get(key, prototype, byte_range)
        if not self._is_open:
            await self._open()
        # read and check in one hop to a worker thread, as LocalStore.get reads
        return await asyncio.to_thread(
            self._read_checked, key, prototype or default_buffer_prototype(), entry
        )

    def _read_checked(self, key: str, prototype: BufferPrototype, entry: tuple[int, int]) -> Buffer:
        name = (split_chunk_key(key) or (key, ""))[0]
        path = self.root / key
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise _damaged(self.root, Damage(name, path, "is missing")) from None
        problem = chunk_problem(data, *entry)
        if problem is not None:
            raise _damaged(self.root, Damage(name, path, problem))
        return prototype.buffer.from_bytes(data)


class ActivationStore:
    """Read access to a complete store; arrays stay on disk until sliced, and every chunk read
    is checked against the store's manifest."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self._group = group
        attrs = group.attrs.asdict()
        self.provenance: dict[str, Any] = dict(attrs[ATTRS_KEY])
        self.hooks: list[str] = list(self.provenance["hooks"])
        self.n_sequences: int = int(self.provenance["n_sequences"])

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, hooks={self.hooks}, n_sequences={self.n_sequences})"

    def array(self, hook: str) -> zarr.Array:
        """The underlying zarr array (``tokens`` or a hook)."""
        if hook != TOKENS and hook not in self.hooks:
            raise KeyError(f"{self.path}: no hook {hook!r}; available: {self.hooks}")
        return self._group[hook]

    def dims(self, hook: str) -> tuple[str, ...]:
        return tuple(self.array(hook).metadata.dimension_names)

    def tokens(self, rows: Rows = slice(None)) -> np.ndarray:
        return self.numpy(TOKENS, rows)

    def numpy(self, hook: str, rows: Rows = slice(None)) -> np.ndarray:
        """Rows (sequences) of a hook as stored (float32 or float16)."""
        array = self.array(hook)
        if isinstance(rows, slice | int | np.integer):
            return array[rows]
        return array.get_orthogonal_selection((np.asarray(rows),))

    def torch(
        self, hook: str, rows: Rows = slice(None), dtype: torch.dtype = _FLOAT32
    ) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.numpy(hook, rows))).to(dtype)

    def xarray(self, hook: str) -> xarray.DataArray:
        """A lazily indexed DataArray with the stored dimension names (reads on ``.values``),
        its attrs the store's provenance."""
        import xarray as xr

        self.array(hook)  # KeyError for unknown hooks
        others = [name for name in [TOKENS, *self.hooks] if name != hook]
        ds = xr.open_dataset(
            self._group.store,  # the verifying store: xarray's reads are checked too
            engine="zarr",
            chunks=None,
            consolidated=True,  # never lists the group (no warning for .snakemake_timestamp)
            zarr_format=3,
            mask_and_scale=False,  # fill_value 0 is data (masked attention), never NaN
            drop_variables=others,
        )
        da = ds[hook]
        da.attrs.update(copy.deepcopy(self.provenance))
        return da

    def iter_batches(
        self,
        hook: str,
        batch_size: int | None = None,
        *,
        as_torch: bool = False,
        dtype: torch.dtype = _FLOAT32,
    ) -> Iterator[np.ndarray | torch.Tensor]:
        """Consecutive row batches; default size = the chunk, so each read is whole chunks."""
        array = self.array(hook)
        batch_size = batch_size or array.chunks[0]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, array.shape[0], batch_size):
            block = array[start : start + batch_size]
            yield torch.from_numpy(block).to(dtype) if as_torch else block

    def verify(self) -> None:
        """Read every chunk file once and check it against the manifest (DamagedStoreError)."""
        entries = getattr(self._group.store, "entries", None)
        if entries is None:
            raise TypeError(f"{self.path} was not opened with open_store: no manifest to check")
        damage = chunk_damage(
            self.path, self._group, [TOKENS, *self.hooks], entries, checksums=True
        )
        if damage is not None:
            raise _damaged(self.path, damage)


def _check_expect(path: Path, provenance: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    # the content hashes first: a store made from another model is reported as such, by name
    for key in sorted(expect, key=lambda k: k not in _NAMED_HASHES):
        expected = expect[key]
        if key in LAYOUT_KEYS:  # speed and layout, not content: never a mismatch
            continue
        found = provenance.get(key)
        if key == "hooks":
            missing = [h for h in expected if h not in (found or [])]
            if missing:
                raise ProvenanceMismatchError(path, key, list(expected), found)
        elif found != expected:
            what = _NAMED_HASHES.get(key)
            names = {}
            if what is not None:
                names = {"found_name": provenance.get(what), "expected_name": expect.get(what)}
            raise ProvenanceMismatchError(path, key, expected, found, what=what, **names)


def _read_manifest(path: Path, attrs: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """``{chunk key: (size, checksum)}`` from the manifest the attrs point at."""
    record = attrs.get("manifest")
    if not isinstance(record, Mapping):
        raise IncompleteStoreError(
            f"{path} has no chunk manifest (written by an older version of mechflow), so "
            "nothing shows its chunks are the ones written: rerun the step that writes it"
        )
    manifest_path = path / str(record.get("file"))
    try:
        data = manifest_path.read_bytes()
    except OSError as err:
        raise DamagedStoreError(
            f"{manifest_path}: manifest unreadable ({err}); the activation store {path} is "
            "damaged: rerun the step that writes it"
        ) from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.get("sha256"):
        raise DamagedStoreError(
            f"{manifest_path}: manifest altered (sha256 {digest[:12]}..., the store's attrs say "
            f"{str(record.get('sha256'))[:12]}...); the activation store {path} is damaged: "
            "rerun the step that writes it"
        )
    manifest = json.loads(data)
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("checksum") != CHECKSUM:
        raise IncompleteStoreError(
            f"{manifest_path}: manifest format {manifest.get('format')!r} "
            f"({manifest.get('checksum')!r}) is not this version's {MANIFEST_FORMAT} "
            f"({CHECKSUM!r}): rerun the step that writes it"
        )
    return {
        f"{name}/{rel}": (int(size), int(crc))
        for name, chunks in manifest["arrays"].items()
        for rel, (size, crc) in chunks.items()
    }


def open_store(path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> ActivationStore:
    """Open a complete, undamaged store; ``expect`` maps provenance keys to required values.

    ``expect["hooks"]`` lists hooks the store must contain; any other key must be equal,
    except the layout keys (batch size, chunk rows), which never decide a store's content.
    Keys outside :data:`EXPECT_KEYS` are refused before anything is read. Every chunk file
    must exist with the size its manifest records; checksums are checked as chunks are read.
    """
    path = Path(path)
    expect = dict(expect or {})
    unknown = sorted(set(expect) - EXPECT_KEYS)
    if unknown:
        raise ValueError(f"unknown expect key(s) {unknown}; allowed: {sorted(EXPECT_KEYS)}")
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
        attrs = group.attrs.asdict()
    except (FileNotFoundError, ValueError, TypeError, zarr.errors.BaseZarrError) as err:
        raise IncompleteStoreError(f"{path} is not an activation store ({err})") from err
    if attrs.get("complete") is not True or ATTRS_KEY not in attrs:
        raise IncompleteStoreError(
            f"{path} is incomplete (complete={attrs.get('complete')!r}, "
            f"rows_written={attrs.get('rows_written')!r}): rerun the step that writes it"
        )
    entries = _read_manifest(path, attrs)
    provenance = attrs[ATTRS_KEY]
    _check_expect(path, provenance, expect)
    damage = chunk_damage(path, group, [TOKENS, *provenance["hooks"]], entries)
    if damage is not None:
        raise _damaged(path, damage)
    verified = _VerifiedStore(path, entries=entries)
    return ActivationStore(path, zarr.open_group(store=verified, mode="r", zarr_format=3))
