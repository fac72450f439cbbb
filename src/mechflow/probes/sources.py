"""Where probe inputs come from: several hooks' activations, read by row chunks.

Probes see rows: one activation vector per hook and row. A source is cut into fixed row
chunks, each read whole as ``(hooks, rows, d_model)``, so the trainer holds only the chunks it
is shuffling (see :mod:`mechflow.probes.train`). In memory, the chunk is the whole array; in an
activation store, rows are ``(seq, pos)`` flattened (row = seq * n_pos + pos) and a chunk is
the store's chunk of sequences, so every read is whole zarr chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from jaxtyping import Float

if TYPE_CHECKING:
    from mechflow.store.reader import ActivationStore


class ProbeSource(Protocol):
    hook_names: tuple[str, ...]
    n_rows: int
    d_model: int
    device: torch.device

    def chunks(self) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` covering the rows in order."""
        ...

    def read(self, start: int, stop: int) -> Float[torch.Tensor, "hook row d_model"]: ...

    def default_groups(self) -> np.ndarray:
        """The group of each row when the caller names none (rows of a group never straddle
        the split)."""
        ...

    def identity(self) -> dict[str, Any]: ...


class ArraySource:
    """In-memory activations ``(hooks, rows, d_model)``: a numpy array or a tensor (its device
    is where the probes train). Each row is its own group unless the caller names groups."""

    def __init__(
        self,
        acts: np.ndarray | torch.Tensor,
        hook_names: Sequence[str] | None = None,
        *,
        chunk_rows: int | None = None,
    ):
        if isinstance(acts, np.ndarray):
            acts = torch.from_numpy(acts)
        if not isinstance(acts, torch.Tensor):
            raise TypeError(f"acts: expected an array or tensor, got {type(acts).__name__}")
        if acts.ndim != 3:
            raise ValueError(
                f"acts: expected (hooks, rows, d_model), got shape {tuple(acts.shape)}"
            )
        if not acts.is_floating_point():
            raise TypeError(f"acts: expected floating-point activations, got {acts.dtype}")
        self.acts = acts.detach()
        n_hooks, self.n_rows, self.d_model = (int(s) for s in acts.shape)
        self.hook_names = _hook_names(hook_names, n_hooks)
        self.device = acts.device
        self.chunk_rows = max(1, int(chunk_rows or self.n_rows))

    def chunks(self) -> list[tuple[int, int]]:
        return [
            (start, min(start + self.chunk_rows, self.n_rows))
            for start in range(0, self.n_rows, self.chunk_rows)
        ]

    def read(self, start: int, stop: int) -> Float[torch.Tensor, "hook row d_model"]:
        return self.acts[:, start:stop]

    def default_groups(self) -> np.ndarray:
        return np.arange(self.n_rows)

    def identity(self) -> dict[str, Any]:
        return {"kind": "array", "shape": list(self.acts.shape), "dtype": str(self.acts.dtype)}


class StoreSource:
    """Hooks of an activation store, streamed by the store's chunks; one group per sequence.

    Every hook must be ``(seq, pos, d_model)``-shaped with the same sizes (the residual stream
    of each layer, say): attention patterns are not per-row vectors.
    """

    def __init__(
        self,
        store: ActivationStore,
        hooks: Sequence[str],
        *,
        device: torch.device | str = "cpu",
    ):
        if isinstance(hooks, str) or not hooks:
            raise ValueError(f"hooks: expected a non-empty list of hook names, got {hooks!r}")
        self.store, self.hook_names = store, tuple(hooks)
        arrays = [store.array(hook) for hook in self.hook_names]  # KeyError naming the hooks
        shapes = {hook: tuple(a.shape) for hook, a in zip(self.hook_names, arrays, strict=True)}
        for hook, shape in shapes.items():
            dims = store.dims(hook)
            if len(shape) != 3 or dims[:2] != ("seq", "pos"):
                raise ValueError(
                    f"{store.path}: hook {hook!r} has axes {dims}; probes need (seq, pos, "
                    "d_model) activations"
                )
        first = shapes[self.hook_names[0]]
        bad = {hook: shape for hook, shape in shapes.items() if shape != first}
        if bad:
            raise ValueError(f"{store.path}: hooks disagree on shape {first}: {bad}")
        self.n_seq, self.n_pos, self.d_model = (int(s) for s in first)
        self.n_rows = self.n_seq * self.n_pos
        self.seq_per_chunk = int(arrays[0].chunks[0])
        self.device = torch.device(device)

    def chunks(self) -> list[tuple[int, int]]:
        step = self.seq_per_chunk * self.n_pos
        return [(start, min(start + step, self.n_rows)) for start in range(0, self.n_rows, step)]

    def read(self, start: int, stop: int) -> Float[torch.Tensor, "hook row d_model"]:
        if start % self.n_pos or (stop % self.n_pos and stop != self.n_rows):
            raise ValueError(f"rows {start}:{stop} do not cover whole sequences of {self.n_pos}")
        seqs = slice(start // self.n_pos, -(-stop // self.n_pos))
        blocks = [self.store.numpy(hook, seqs) for hook in self.hook_names]  # seq pos d_model
        out = np.stack([b.reshape(-1, self.d_model) for b in blocks])  # hook row d_model
        return torch.from_numpy(out)

    def default_groups(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_seq), self.n_pos)

    def identity(self) -> dict[str, Any]:
        prov = self.store.provenance
        return {
            "kind": "store",
            "path": str(self.store.path),
            "model": prov.get("model"),
            "model_hash": prov.get("model_hash"),
            "dataset_sha256": prov.get("dataset_sha256"),
            "config_hash": prov.get("config_hash"),
            "hooks": list(self.hook_names),
            "n_seq": self.n_seq,
            "n_pos": self.n_pos,
        }


def as_source(
    acts: ProbeSource | np.ndarray | torch.Tensor, hook_names: Sequence[str] | None = None
) -> ProbeSource:
    """A source as given, or an :class:`ArraySource` over in-memory activations."""
    if isinstance(acts, np.ndarray | torch.Tensor):
        return ArraySource(acts, hook_names)
    if not all(hasattr(acts, k) for k in ("hook_names", "chunks", "read")):
        raise TypeError(f"acts: expected an array, a tensor or a source, got {type(acts).__name__}")
    if hook_names is not None and tuple(hook_names) != tuple(acts.hook_names):
        raise ValueError(
            f"hook_names: {list(hook_names)} differ from the source's {list(acts.hook_names)}"
        )
    return acts


def _hook_names(names: Sequence[str] | None, n_hooks: int) -> tuple[str, ...]:
    if names is None:
        return tuple(f"hook_{i}" for i in range(n_hooks))
    names = tuple(names)
    if len(names) != n_hooks or len(set(names)) != len(names):
        raise ValueError(
            f"hook_names: expected {n_hooks} distinct names (one per hook of acts), got {names}"
        )
    return names
