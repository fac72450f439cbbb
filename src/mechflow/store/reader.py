"""Open activation stores written by :mod:`mechflow.store.writer`, refusing unfinished or foreign ones.

Arrays are always reached by name from the hook list in the attrs, never by listing the group:
Snakemake drops a ``.snakemake_timestamp`` file into ``directory()`` outputs, and zarr warns
about it when iterating members.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import zarr

from mechflow.store.writer import ATTRS_KEY, LAYOUT_KEYS, TOKENS

if TYPE_CHECKING:
    import xarray

log = logging.getLogger(__name__)

Rows = slice | int | Sequence[int] | np.ndarray
# Defaults in the class body, where the method ``torch`` shadows the module.
_FLOAT32 = torch.float32


class IncompleteStoreError(RuntimeError):
    """The path is not a finished activation store (killed run, still writing, or not a store)."""


class ProvenanceMismatchError(RuntimeError):
    """The store was made from another model, dataset or settings than the caller expects."""

    def __init__(self, path: Path, key: str, expected: Any, found: Any):
        self.key, self.expected, self.found = key, expected, found
        super().__init__(
            f"{path}: provenance {key!r} does not match: expected {expected!r}, found {found!r}"
        )


class ActivationStore:
    """Read access to a complete store; arrays stay on disk until sliced."""

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
        """A lazily indexed DataArray with the stored dimension names (reads on ``.values``)."""
        import xarray as xr

        self.array(hook)  # KeyError for unknown hooks
        others = [name for name in [TOKENS, *self.hooks] if name != hook]
        with warnings.catch_warnings():
            # Snakemake's .snakemake_timestamp inside the store is not a zarr node.
            warnings.filterwarnings("ignore", message=".*not recognized as a component")
            ds = xr.open_dataset(
                self.path,
                engine="zarr",
                chunks=None,
                consolidated=False,
                zarr_format=3,
                mask_and_scale=False,  # fill_value 0 is data (masked attention), never NaN
                drop_variables=others,
            )
        return ds[hook]

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


def _check_expect(path: Path, provenance: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    for key, expected in expect.items():
        if key in LAYOUT_KEYS:  # speed and layout, not content: never a mismatch
            continue
        found = provenance.get(key)
        if key == "hooks":
            missing = [h for h in expected if h not in (found or [])]
            if missing:
                raise ProvenanceMismatchError(path, key, list(expected), found)
        elif found != expected:
            raise ProvenanceMismatchError(path, key, expected, found)


def open_store(path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> ActivationStore:
    """Open a complete store; ``expect`` maps provenance keys to required values.

    ``expect["hooks"]`` lists hooks the store must contain; any other key must be equal,
    except the layout keys (batch size, chunk rows), which never decide a store's content.
    """
    path = Path(path)
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
    _check_expect(path, attrs[ATTRS_KEY], expect or {})
    return ActivationStore(path, group)
