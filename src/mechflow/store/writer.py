"""Stream a model's activations into one zarr v3 group, resumably, in bounded memory.

One array per full TransformerLens hook name plus ``tokens``; every array is chunked along
``seq`` only. Rows per chunk come from a bytes target, not from the forward batch size, and
forward batches are buffered into whole chunks (a batch may straddle two), so each write is one
whole aligned chunk (misaligned chunks force read-modify-write, measured 3-8x slower). Group
attrs hold ``complete`` (false until every row is written, set last), ``rows_written``
(advanced after each whole chunk, so a killed run resumes where it stopped) and the provenance
under ``mechflow``.

Before ``complete``, the writer records every chunk file of every array in ``manifest.json``
(:data:`MANIFEST_FILE`: size and crc32c of each, as written) and consolidates the metadata
(so ``xarray.open_zarr`` never lists the group and never trips on Snakemake's
``.snakemake_timestamp``); the attrs' ``manifest`` entry holds the manifest's sha256. While
writing, each chunk's entries are appended to :data:`MANIFEST_LOG` before ``rows_written``
advances, so a resumed store's manifest covers the chunks written before the kill. Readers
(:mod:`mechflow.store.reader`) refuse any chunk that differs from its entry.

A store's identity is its content (:data:`MATCH_KEYS`): the batch size and the chunk rows only
decide speed and layout, so a store written with other ones is reused or resumed, never redone.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import queue
import shutil
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import google_crc32c  # a dependency of zarr (its crc32c codec)
import numpy as np
import torch
import zarr
from jaxtyping import Int
from zarr.core.sync import sync
from zarr.storage import LocalStore

from mechflow.artifacts import (
    atomic_path,
    config_hash,
    file_sha256,
    git_revision,
    package_versions,
)
from mechflow.progress import Progress

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)

ATTRS_KEY = "mechflow"
TOKENS = "tokens"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
COMPRESSIONS = ("none", "zstd", "blosc")
# Provenance that decides the store's content: a store is resumed or reused only when all of
# these match.
MATCH_KEYS = (
    "model_hash", "dataset_sha256", "n_sequences", "n_pos", "hooks", "dtype", "compression",
)  # fmt: skip
# Recorded for information, never compared: speed and layout, not content. A resumed store
# keeps its own chunk rows.
LAYOUT_KEYS = ("batch_size", "chunk_size", "chunk_rows")
# Default bytes per chunk, summed over the hooks (see auto_chunk_rows).
TARGET_CHUNK_BYTES = 16 << 20
REQUIRED_PROVENANCE = ("model_hash", "dataset_sha256")
# Every chunk file's size and checksum, written before ``complete``; the log grows chunk by
# chunk while the store is written (and is gone once the manifest is).
MANIFEST_FILE = "manifest.json"
MANIFEST_LOG = "manifest.log.jsonl"
MANIFEST_FORMAT = 1
CHECKSUM = "crc32c"

# Per-position axes of each hook kind (after the leading ``seq``), in TL's vocabulary. Keys are
# the last one or two components of the hook name; the longer key wins.
_HEAD_DIMS = ("pos", "head_index", "d_head")
_PATTERN_DIMS = ("head_index", "query_pos", "key_pos")
_RESID_DIMS = ("pos", "d_model")
_DIMS = {
    "hook_pattern": _PATTERN_DIMS,
    "hook_attn_scores": _PATTERN_DIMS,
    "hook_q": _HEAD_DIMS,
    "hook_k": _HEAD_DIMS,
    "hook_v": _HEAD_DIMS,
    "hook_z": _HEAD_DIMS,
    "hook_rot_q": _HEAD_DIMS,
    "hook_rot_k": _HEAD_DIMS,
    "hook_result": ("pos", "head_index", "d_model"),
    "hook_q_input": ("pos", "head_index", "d_model"),
    "hook_k_input": ("pos", "head_index", "d_model"),
    "hook_v_input": ("pos", "head_index", "d_model"),
    "mlp.hook_pre": ("pos", "d_mlp"),
    "mlp.hook_pre_linear": ("pos", "d_mlp"),
    "mlp.hook_post": ("pos", "d_mlp"),
    "hook_scale": ("pos", "one"),
    "hook_normalized": _RESID_DIMS,
    "hook_embed": _RESID_DIMS,
    "hook_pos_embed": _RESID_DIMS,
    "hook_resid_pre": _RESID_DIMS,
    "hook_resid_mid": _RESID_DIMS,
    "hook_resid_post": _RESID_DIMS,
    "hook_attn_in": _RESID_DIMS,
    "hook_mlp_in": _RESID_DIMS,
    "hook_attn_out": _RESID_DIMS,
    "hook_mlp_out": _RESID_DIMS,
    "unembed.hook_in": _RESID_DIMS,
    "unembed.hook_out": ("pos", "d_vocab"),
}


def dimension_names(hook: str, shape: Sequence[int]) -> tuple[str, ...]:
    """Dimension names of a stored hook array of ``shape`` (leading ``seq`` axis included).

    Unknown kinds or unexpected ranks fall back to ``seq, pos, <hook>.dim<i>``: unique names, so
    an xarray view never aligns unrelated axes.
    """
    parts = hook.split(".")
    for key in (".".join(parts[-2:]), parts[-1]):
        dims = _DIMS.get(key)
        if dims is not None and len(dims) + 1 == len(shape):
            return ("seq", *dims)
    fallback = ("seq", "pos", *(f"{hook}.dim{i}" for i in range(2, len(shape))))
    return fallback[: len(shape)]


def compressors(compression: str):
    """zarr 3 codecs for a compression name (activations barely compress: ~1.07x)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if compression == "none":
        return None
    if compression == "zstd":
        return ZstdCodec(level=3)
    if compression == "blosc":
        return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    raise ValueError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")


def validate_tokens(tokens: np.ndarray, d_vocab: int, n_ctx: int) -> None:
    """Shape and id checks, streamed so a memory-mapped dataset is never loaded whole."""
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"tokens must be a 2-D integer array (seq, pos), got {tokens.dtype} {tokens.shape}"
        )
    n_seq, n_pos = tokens.shape
    if n_seq < 1 or n_pos < 1:
        raise ValueError(f"tokens are empty: shape {tokens.shape}")
    if n_pos > n_ctx:
        raise ValueError(f"tokens have {n_pos} positions but the model's n_ctx is {n_ctx}")
    step = max(1, (1 << 24) // n_pos)
    for start in range(0, n_seq, step):
        block = tokens[start : start + step]
        lo, hi = int(block.min()), int(block.max())
        if lo < 0 or hi >= d_vocab:
            raise ValueError(
                f"token ids must lie in [0, {d_vocab}) (the model's d_vocab), found {lo}..{hi} "
                f"in rows {start}..{start + len(block) - 1}"
            )


def forward_kwargs(hooks: Iterable[str]) -> dict[str, Any]:
    """The least forward pass that fires ``hooks``: stop after the last block needed.

    Skipping the unembed (TL 3 ``stop_at_layer``) was measured ~1.3x faster on GPT-2-small shapes.
    """
    hooks = list(hooks)
    if any(h.startswith("unembed.") for h in hooks):
        return {"return_type": "logits"}
    if any(h.startswith("ln_final.") for h in hooks):
        return {"return_type": None}  # runs ln_final, skips the unembed
    layers = [int(h.split(".")[1]) if h.startswith("blocks.") else -1 for h in hooks]
    return {"stop_at_layer": max(layers) + 1}


def check_hook_names(model: HookedTransformer, hooks: Sequence[str]) -> None:
    unknown = [h for h in hooks if h not in model.hook_dict]
    if unknown:
        raise ValueError(
            f"unknown hook(s) {unknown} for this model; available: {sorted(model.hook_dict)}"
        )


def _identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    ident = {key: meta.get(key) for key in MATCH_KEYS}
    ident["hooks"] = sorted(ident["hooks"] or [])
    return ident


def _store_meta(
    provenance: Mapping[str, Any],
    hooks: list[str],
    dtype: str,
    compression: str,
    n_seq: int,
    n_pos: int,
    **extra: Any,
) -> dict[str, Any]:
    """The store's provenance attrs, with the hash of what decides its content."""
    meta = {
        **provenance,
        "hooks": hooks,
        "dtype": dtype,
        "compression": compression,
        "n_sequences": n_seq,
        "n_pos": n_pos,
        **extra,
        "package_versions": package_versions(),
        "git_revision": git_revision(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    meta["config_hash"] = config_hash(_identity(meta))
    return meta


def _existing_state(out: Path, meta: Mapping[str, Any]) -> str | int:
    """'absent', 'complete', 'stale', or the row to resume from."""
    if not out.exists():
        return "absent"
    if not (out / "zarr.json").is_file():
        if out.is_dir() and not any(out.iterdir()):
            return "absent"
        raise FileExistsError(f"{out} exists and is not a zarr store; refusing to overwrite it")
    try:
        group = zarr.open_group(out, mode="r", zarr_format=3)
        attrs = group.attrs.asdict()
        found = attrs.get(ATTRS_KEY) or {}
        rows = int(attrs.get("rows_written", 0))
    except (ValueError, TypeError, OSError, zarr.errors.BaseZarrError) as err:
        log.info("%s: unreadable store (%s); deleting and restarting", out, err)
        return "stale"
    differ = [k for k in MATCH_KEYS if _identity(found)[k] != _identity(meta)[k]]
    if differ:
        log.info("%s: provenance differs (%s); deleting and restarting", out, ", ".join(differ))
        return "stale"
    if attrs.get("complete") is True:
        from mechflow.store.reader import IncompleteStoreError, open_store  # (imports this)

        try:  # reused only if every chunk is still the one written: read them all once
            open_store(out).verify()
        except IncompleteStoreError as err:  # no manifest (older code), or damaged
            log.info("%s; deleting and restarting", err)
            return "stale"
        return "complete"
    # the chunks before rows_written must be the ones the log recorded (older code kept none)
    damage = chunk_damage(out, group, [TOKENS, *meta["hooks"]], _load_entries(out), rows=rows)
    if damage is not None:
        log.info("%s: %s; deleting and restarting", damage.chunk, damage.problem)
        return "stale"
    return rows


def _existing_chunk_rows(group: zarr.Group, shapes: Mapping[str, tuple]) -> int | None:
    """Rows per chunk of a partial store, or None unless every array is there and agrees."""
    try:
        arrays = {name: group[name] for name in shapes}
    except KeyError:
        return None
    rows = {a.chunks[0] for a in arrays.values()}
    if len(rows) != 1 or any(a.shape != shapes[n] for n, a in arrays.items()):
        return None
    return rows.pop()


# --- the manifest: every chunk file's size and checksum, as written ---------------------------
def chunk_checksum(data: Any) -> int:
    """crc32c of a chunk's bytes: against damage, not against an adversary.

    Hardware crc32c (google_crc32c) ran at 5-20 GB/s here; zlib.crc32 at 2-5, sha256 at 1.5,
    blake2b at 1. It holds the GIL (zlib.crc32 does not), but for less time than zlib.crc32
    takes: ~1 ms per 16 MiB chunk.
    """
    return google_crc32c.value(data)


def split_chunk_key(key: str) -> tuple[str, str] | None:
    """``("tokens", "c/3/0")`` for the chunk key ``tokens/c/3/0``; None for metadata keys.

    Array names are hook names (dots, never slashes), so the first component is the array.
    """
    name, sep, rest = key.partition("/")
    return (name, rest) if sep and rest.startswith("c/") else None


class _RecordingStore(LocalStore):
    """A LocalStore that notes the size and checksum of every chunk it writes."""

    def __init__(
        self,
        root: Path | str,
        *,
        read_only: bool = False,
        written: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(root, read_only=read_only)
        # shared with the copies zarr makes through with_read_only
        self.written: dict[str, tuple[int, int]] = {} if written is None else written

    def with_read_only(self, read_only: bool = False) -> _RecordingStore:
        return type(self)(self.root, read_only=read_only, written=self.written)

    async def set(self, key: str, value: Any) -> None:
        if split_chunk_key(key) is None:
            return await super().set(key, value)
        checksum = chunk_checksum(value.as_numpy_array())  # ~1 ms per 16 MiB: no thread hop
        await super().set(key, value)
        self.written[key] = (len(value), checksum)

    async def delete(self, key: str) -> None:
        await super().delete(key)
        self.written.pop(key, None)

    def take(self) -> dict[str, tuple[int, int]]:
        """The entries noted since the last call."""
        taken = dict(self.written)
        self.written.clear()
        return taken


def _append_log(out: Path, entries: Mapping[str, tuple[int, int]]) -> None:
    if entries:
        with open(out / MANIFEST_LOG, "a") as fh:
            fh.writelines(json.dumps([key, *entry]) + "\n" for key, entry in entries.items())


def _load_entries(out: Path) -> dict[str, tuple[int, int]]:
    """The chunk entries recorded so far: a written manifest's, then the log's, later wins.

    A line torn by a kill (and anything after it) is dropped: its chunk was never counted in
    ``rows_written``, so it is written again.
    """
    entries: dict[str, tuple[int, int]] = {}
    try:
        arrays = json.loads((out / MANIFEST_FILE).read_text())["arrays"]
        for name, chunks in arrays.items():
            entries.update({f"{name}/{rel}": (size, crc) for rel, (size, crc) in chunks.items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        lines = (out / MANIFEST_LOG).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            key, size, crc = json.loads(line)
        except (ValueError, TypeError):
            break
        entries[key] = (int(size), int(crc))
    return entries


def _rewrite_log(out: Path, entries: Mapping[str, tuple[int, int]]) -> None:
    """The log without a torn tail, so that lines appended by a resumed run stay whole."""
    with atomic_path(out / MANIFEST_LOG) as tmp:
        tmp.write_text("".join(json.dumps([key, *entry]) + "\n" for key, entry in entries.items()))


class Damage(NamedTuple):
    """What is wrong with a store's chunks: the first chunk file found at fault."""

    array: str
    chunk: Path
    problem: str


def chunk_problem(data: Any, size: int, checksum: int) -> str | None:
    """Why ``data`` (a chunk file's bytes) is not the chunk the manifest recorded, or None."""
    if len(data) != size:
        return f"is {len(data)} bytes, the manifest says {size} (truncated or rewritten)"
    found = chunk_checksum(data)
    if found != checksum:
        return f"has {CHECKSUM} {found:08x}, the manifest says {checksum:08x} (altered)"
    return None


def chunk_damage(
    root: Path,
    group: zarr.Group,
    names: Sequence[str],
    entries: Mapping[str, tuple[int, int]],
    *,
    rows: int | None = None,
    checksums: bool = False,
) -> Damage | None:
    """The first chunk of ``names`` (all, or those holding rows before ``rows``) that has no
    entry, is missing, or has another size (and with ``checksums``, other bytes) than it."""
    for name in names:
        try:
            array = group[name]
        except KeyError:
            return Damage(name, root / name, "is missing (no such array)")
        grid = [range(-(-n // c)) for n, c in zip(array.shape, array.chunks, strict=True)]
        encode = array.metadata.encode_chunk_key
        for index in itertools.product(*grid):
            if rows is not None and index[0] * array.chunks[0] >= rows:
                break  # the first axis varies slowest: no later chunk holds earlier rows
            key = f"{name}/{encode(index)}"
            path = os.path.join(root, key)  # str, not Path: ~3x faster over 1e5 chunks
            entry = entries.get(key)
            if entry is None:
                return Damage(name, Path(path), "is not in the manifest")
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                return Damage(name, Path(path), "is missing")
            if size != entry[0]:
                return Damage(name, Path(path), f"is {size} bytes, the manifest says {entry[0]}")
            if checksums:
                with open(path, "rb") as fh:
                    problem = chunk_problem(fh.read(), *entry)
                if problem is not None:
                    return Damage(name, Path(path), problem)
    return None


def _finish(out: Path, names: Sequence[str], entries: Mapping[str, tuple[int, int]]) -> None:
    """Manifest, consolidated metadata, the manifest's digest, then ``complete``, in that order."""
    group = zarr.open_group(out, mode="r", zarr_format=3)
    damage = chunk_damage(out, group, names, entries)
    if damage is not None:  # a bug, never a user's doing: refuse to call it complete
        raise RuntimeError(f"{damage.chunk}: chunk of {damage.array!r} {damage.problem}")
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "checksum": CHECKSUM,
        "arrays": {name: {} for name in names},
    }
    for key, (size, crc) in entries.items():
        name, rel = split_chunk_key(key) or (None, None)
        if name in manifest["arrays"]:
            manifest["arrays"][name][rel] = [size, crc]
    for name, chunks in manifest["arrays"].items():  # in chunk order: c/2/0 before c/10/0
        order = sorted(chunks, key=lambda rel: [int(i) for i in rel.split("/")[1:]])
        manifest["arrays"][name] = {rel: chunks[rel] for rel in order}
    with atomic_path(out / MANIFEST_FILE) as tmp:  # compact: a big store has 1e5+ chunks
        tmp.write_text(json.dumps(manifest, separators=(",", ":")) + "\n")
    (out / MANIFEST_LOG).unlink(missing_ok=True)
    with warnings.catch_warnings():
        # v3 consolidated metadata is a zarr-python extension; the manifest is not a zarr node
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        warnings.filterwarnings("ignore", message=".*not recognized as a component")
        group = zarr.consolidate_metadata(out, zarr_format=3)
    n_chunks = sum(len(chunks) for chunks in manifest["arrays"].values())
    group.attrs["manifest"] = {
        "file": MANIFEST_FILE,
        "sha256": file_sha256(out / MANIFEST_FILE),
        "chunks": n_chunks,
    }
    group.attrs["complete"] = True


def _create(
    out: Path, meta: Mapping[str, Any], shapes: Mapping[str, tuple], dtype: str, compression: str
) -> zarr.Group:
    # complete=false goes in first, so a run killed while creating arrays is never taken as done.
    group = zarr.open_group(
        store=_RecordingStore(out),
        mode="w",
        zarr_format=3,
        attributes={"complete": False, "rows_written": 0, ATTRS_KEY: dict(meta)},
    )
    rows = meta["chunk_rows"]
    for name, shape in shapes.items():
        is_tokens = name == TOKENS
        group.create_array(
            name,
            shape=shape,
            chunks=(rows, *shape[1:]),
            dtype="int32" if is_tokens else dtype,
            fill_value=0,
            compressors=None if is_tokens else compressors(compression),
            dimension_names=("seq", "pos") if is_tokens else meta["dimension_names"][name],
            config=WRITE_CONFIG,
        )
    return group


# Every chunk is data: write it even when it equals the fill value (a chunk of token 0s, a
# dead ReLU's zeros), which also skips zarr's per-chunk "all fill value?" scan. A runtime
# setting, not stored: arrays opened from the group get it again through ``_writable``.
WRITE_CONFIG = {"write_empty_chunks": True}


def _writable(group: zarr.Group, names: Iterable[str]) -> dict[str, zarr.Array]:
    return {name: group[name].with_config(WRITE_CONFIG) for name in names}


def _forward_batches(
    model: HookedTransformer,
    tokens: np.ndarray,
    hooks: list[str],
    fwd: Mapping[str, Any],
    start_row: int,
    batch_size: int,
) -> Iterator[tuple[int, int, np.ndarray, dict[str, torch.Tensor]]]:
    """(start, stop, tokens, cache) per batch; only the current batch is ever in memory."""
    device = model.cfg.device
    for start in range(start_row, tokens.shape[0], batch_size):
        stop = min(start + batch_size, tokens.shape[0])
        batch_np = np.array(tokens[start:stop], dtype=np.int32)  # batch pos (copied off the mmap)
        batch = torch.from_numpy(batch_np).to(device=device, dtype=torch.long)
        with torch.inference_mode():
            _, cache = model.run_with_cache(
                batch, names_filter=hooks, return_cache_object=False, **fwd
            )
        yield start, stop, batch_np, cache
        del cache  # before the next forward pass, not after it


def auto_chunk_rows(row_bytes: int, n_seq: int) -> int:
    """Rows per chunk: ~TARGET_CHUNK_BYTES over all hooks, at least one row, at most the data.

    Independent of the forward batch size, so the layout (and the bytes on disk) is the same
    whatever batch size wrote the store. zarr 3 pays ~2 ms per chunk write whatever its size, so
    0.5 MB chunks (8 x 128 tokens of a d_model 128 model) write at ~200 MB/s and 8 MB chunks at
    ~1 GB/s.
    """
    return max(1, min(TARGET_CHUNK_BYTES // max(1, row_bytes), n_seq))


def write_activation_store(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "seq pos"],
    out: str | Path,
    hooks: Sequence[str],
    *,
    batch_size: int,
    chunk_size: int | None = None,
    dtype: str = "float32",
    compression: str = "none",
    provenance: Mapping[str, Any],
    progress: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
    background: bool | None = None,
) -> Path:
    """Cache ``hooks`` of ``model`` over ``tokens`` into the zarr v3 group ``out``.

    ``batch_size`` sequences go through the model at a time (speed and memory only: it is not
    part of the store's identity); ``chunk_size`` sequences make one chunk of a new store
    (default :func:`auto_chunk_rows`), buffered across batches and written whole.
    ``provenance`` must carry ``model_hash`` and ``dataset_sha256`` (plus e.g. ``model``,
    ``dataset``, ``seed``); the writer adds hooks, layout, versions, git revision and time.
    An existing complete store whose content provenance (:data:`MATCH_KEYS`) matches is kept,
    whatever batch size and chunk rows wrote it, once every chunk is checked against its
    manifest; an incomplete matching one is resumed from ``rows_written`` in its own chunk
    layout; any other store (a damaged one, one without a manifest) is deleted and rewritten.
    ``on_chunk(start, stop)`` is called after each chunk is recorded (tests use it to simulate
    a kill). ``background`` writes chunks on a second thread while the next batches run
    (None: :func:`background_writes` decides); the store's bytes are the same either way.

    Hooks are checked against ``model.hook_dict`` and then against the first batch's forward
    pass (a hook may exist yet never fire, e.g. ``hook_attn_in`` without ``use_attn_in``), both
    before anything is written or deleted; that first batch is then written, not recomputed.
    """
    out = Path(out)
    hooks = list(dict.fromkeys(hooks))
    if not hooks:
        raise ValueError("no hooks requested")
    if TOKENS in hooks:
        raise ValueError(f"{TOKENS!r} is reserved for the input tokens, not a hook name")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    compressors(compression)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    missing = [k for k in REQUIRED_PROVENANCE if not provenance.get(k)]
    if missing:
        raise ValueError(
            f"provenance lacks {missing}: needed to decide whether a store can be reused"
        )
    validate_tokens(tokens, model.cfg.d_vocab, model.cfg.n_ctx)
    check_hook_names(model, hooks)
    fwd = forward_kwargs(hooks)

    n_seq, n_pos = tokens.shape
    meta = _store_meta(
        provenance, hooks, dtype, compression, n_seq, n_pos,
        batch_size=batch_size, chunk_size=chunk_size, forward_kwargs=fwd,
    )  # fmt: skip

    state = _existing_state(out, meta)
    if state == "complete":
        log.info("%s is complete with matching provenance; nothing to do", out)
        return out
    start_row = state if isinstance(state, int) else 0
    batches = _forward_batches(model, tokens, hooks, fwd, start_row, batch_size)
    first = next(batches, None)
    if first is None:  # killed between the last chunk and ``complete``
        _finish(out, [TOKENS, *hooks], _load_entries(out))
        return out
    silent = [h for h in hooks if h not in first[3]]
    if silent:
        raise ValueError(f"hook(s) {silent} exist but do not fire in this model's forward pass")
    shapes = {TOKENS: (n_seq, n_pos), **{h: (n_seq, *first[3][h].shape[1:]) for h in hooks}}
    np_dtype = np.dtype(dtype)
    row_bytes = sum(int(np.prod(shapes[h][1:])) for h in hooks) * np_dtype.itemsize
    chunk_rows = chunk_size or auto_chunk_rows(row_bytes, n_seq)

    if isinstance(state, int):
        group = zarr.open_group(store=_RecordingStore(out), mode="r+", zarr_format=3)
        existing = _existing_chunk_rows(group, shapes)
        if existing is None or start_row % existing:
            log.info("%s: arrays or rows_written inconsistent; deleting and restarting", out)
            del first, batches
            shutil.rmtree(out)
            return write_activation_store(
                model, tokens, out, hooks, batch_size=batch_size, chunk_size=chunk_size,
                dtype=dtype, compression=compression, provenance=provenance,
                progress=progress, on_chunk=on_chunk, background=background,
            )  # fmt: skip
        if existing != chunk_rows:
            log.info("%s: keeping its %d rows per chunk (not %d)", out, existing, chunk_rows)
        chunk_rows = existing
        _rewrite_log(out, _load_entries(out))
        log.info("%s: resuming at row %d of %d", out, start_row, n_seq)
    else:
        meta["chunk_rows"] = chunk_rows
        meta["dimension_names"] = {h: list(dimension_names(h, shapes[h])) for h in hooks}
        if state == "stale":
            shutil.rmtree(out)
        group = _create(out, meta, shapes, dtype, compression)
    arrays = _writable(group, shapes)

    bar = Progress(
        total=n_seq,
        initial=start_row,
        desc=f"caching {out.name}",
        unit="sequence",
        rate_unit="tokens",
        rate_scale=n_pos,
        enabled=progress,
        logger=log,
    )
    remaining = itertools.chain([first], batches)
    del first  # else the first batch's activations stay alive for the whole run
    buffer: dict[str, np.ndarray] = {}
    chunk_start = start_row  # a multiple of chunk_rows: chunks stay aligned
    if background is None:
        background = background_writes(model.cfg.device)
    parallel = write_parallelism(model.cfg.device, background)
    with bar, _ChunkWriter(group, arrays, on_chunk, background, parallel) as writer:
        for start, stop, batch_np, cache in remaining:
            row = start
            while row < stop:  # a batch may end one chunk and begin the next
                if not buffer:  # the last one belongs to the writer now
                    chunk_start = row
                    rows = min(chunk_rows, n_seq - row)
                    buffer = writer.recycled(rows) or {
                        TOKENS: np.empty((rows, n_pos), dtype=np.int32),
                        **{h: np.empty((rows, *shapes[h][1:]), dtype=np_dtype) for h in hooks},
                    }
                take = min(stop, chunk_start + len(buffer[TOKENS])) - row
                lo, src = row - chunk_start, row - start
                buffer[TOKENS][lo : lo + take] = batch_np[src : src + take]
                for hook in hooks:  # cast and device-to-host copy in one step
                    torch.from_numpy(buffer[hook][lo : lo + take]).copy_(
                        cache[hook][src : src + take]
                    )
                row += take
                if lo + take == len(buffer[TOKENS]):
                    writer.put(chunk_start, chunk_start + lo + take, buffer)
                    buffer = {}
            del cache
            bar.update(stop - start)
    _finish(out, list(shapes), _load_entries(out))
    log.info("wrote %s: %d sequences, hooks %s", out, n_seq, hooks)
    return out


def write_array_store(
    out: str | Path,
    arrays: Mapping[str, np.ndarray],
    *,
    provenance: Mapping[str, Any],
    tokens: Int[np.ndarray, "seq pos"] | None = None,
    dtype: str = "float32",
    compression: str = "none",
    dims: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write activations computed elsewhere (a toy model's hidden layer, labels of games) as an
    activation store.

    Same layout, attrs and ``complete``-last contract as :func:`write_activation_store`, so
    readers and the SAE trainer cannot tell the difference. Arrays are ``(seq, pos, ...)``;
    ``tokens`` defaults to the row index (there are no tokens). ``dims`` names an array's axes
    (default: from its name, as for hooks).
    """
    out = Path(out)
    missing = [k for k in REQUIRED_PROVENANCE if not provenance.get(k)]
    if missing:
        raise ValueError(f"provenance lacks {missing}")
    shapes = {h: a.shape for h, a in arrays.items()}
    n_seq, n_pos = next(iter(shapes.values()))[:2]
    bad = {h: s for h, s in shapes.items() if s[:2] != (n_seq, n_pos)}
    if bad:
        raise ValueError(f"arrays disagree on (seq, pos) = {(n_seq, n_pos)}: {bad}")
    if tokens is None:
        tokens = np.repeat(np.arange(n_seq, dtype=np.int32)[:, None], n_pos, axis=1)
    hooks = list(arrays)
    meta = _store_meta(provenance, hooks, dtype, compression, n_seq, n_pos)
    row_bytes = sum(int(np.prod(s[1:])) for s in shapes.values()) * np.dtype(dtype).itemsize
    meta["chunk_rows"] = auto_chunk_rows(row_bytes, n_seq)
    meta["dimension_names"] = {
        h: list((dims or {}).get(h) or dimension_names(h, shapes[h])) for h in hooks
    }
    bad = {h: d for h, d in meta["dimension_names"].items() if len(d) != len(shapes[h])}
    if bad:
        raise ValueError(f"dims: {bad} do not match the arrays' ranks {shapes}")
    if out.exists():
        shutil.rmtree(out)
    group = _create(out, meta, {TOKENS: (n_seq, n_pos), **shapes}, dtype, compression)
    writable = _writable(group, [TOKENS, *hooks])
    writable[TOKENS][:] = tokens.astype(np.int32)
    for hook, values in arrays.items():
        writable[hook][:] = values.astype(dtype)
    group.attrs["rows_written"] = n_seq
    _finish(out, [TOKENS, *hooks], group.store.take())
    log.info("wrote %s: %d rows, hooks %s", out, n_seq, hooks)
    return out


def background_writes(device: torch.device | str) -> bool:
    """Write on a second thread only when it will not steal a core from the forward pass.

    With torch using every core, a writer thread preempts OpenMP workers and stalls them at
    barriers (measured, 2 threads on 2 busy cores: 0.73 of bare speed vs 0.81 writing inline);
    with a core to spare it hides the writes (1 thread on 2 cores: 0.97 vs 0.93). On a GPU the
    forward pass runs asynchronously, so overlapping is always a win.
    """
    if torch.device(device).type != "cpu":
        return True
    return torch.get_num_threads() < _cores()


def write_parallelism(device: torch.device | str, background: bool) -> int:
    """Arrays of a chunk encoded and written at once: the cores the forward pass leaves free.

    Inline, the forward pass waits, so every core; in the background, those torch does not use
    (on a GPU, all but the one driving it). More would take a core from the forward pass for
    the writer's sake: the writer hides behind it only while it keeps to its own cores.
    """
    cores = _cores()
    if not background:
        return cores
    busy = torch.get_num_threads() if torch.device(device).type == "cpu" else 1
    return max(1, cores - busy)


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


class _ChunkWriter:
    """Writes whole chunks in order, each then counted in ``rows_written``; optionally on a
    background thread.

    A chunk of every array is one trip to zarr's event loop (zarr 3 costs ~2 ms per trip in
    thread hops alone, as much as a whole forward pass of a small model on a GPU), in which up
    to ``parallel`` arrays (:func:`write_parallelism`) are encoded and written side by side on
    zarr's threads: zstd/blosc and ``write`` release the GIL. Written buffers come back
    through :meth:`recycled`, since fresh memory costs a page fault per 4 KiB. In the
    background, the queue holds one chunk, so at most three are in memory (one being filled,
    one queued, one being written); after an error the thread drains the queue without
    writing, and the error is re-raised in the caller's thread. The bytes are the same
    either way: each chunk is encoded on its own, from a buffer filled before it is handed over.
    """

    def __init__(
        self,
        group: zarr.Group,
        arrays: Mapping[str, zarr.Array],
        on_chunk: Callable[[int, int], None] | None,
        background: bool,
        parallel: int = 1,
    ):
        self._group, self._arrays, self._on_chunk = group, arrays, on_chunk
        self._parallel = parallel
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._run, name="activation-writer", daemon=True)

    def __enter__(self) -> _ChunkWriter:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        if exc_info[0] is None:
            self._raise()

    def put(self, start: int, stop: int, chunk: dict[str, np.ndarray]) -> None:
        """Hand over a filled chunk; the caller must not touch its arrays again."""
        self._raise()
        if self._thread is None:
            self._write(start, stop, chunk)
        else:
            self._queue.put((start, stop, chunk))  # blocks while the writer is behind

    def recycled(self, rows: int) -> dict[str, np.ndarray] | None:
        """A written chunk's buffers, when one of ``rows`` rows is free (every row is then
        overwritten before it is handed back)."""
        while True:
            try:
                chunk = self._free.get_nowait()
            except queue.Empty:
                return None
            if len(chunk[TOKENS]) == rows:
                return chunk

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _write(self, start: int, stop: int, chunk: dict[str, np.ndarray]) -> None:
        sync(_set_rows(self._arrays, start, stop, chunk, self._parallel))
        store = self._group.store  # a _RecordingStore: log what it wrote before counting it
        _append_log(store.root, dict(sorted(store.take().items())))  # written side by side
        self._group.attrs["rows_written"] = stop
        if self._on_chunk is not None:
            self._on_chunk(start, stop)
        self._free.put(chunk)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as err:
                    self._error = err


async def _set_rows(
    arrays: Mapping[str, zarr.Array],
    start: int,
    stop: int,
    values: Mapping[str, np.ndarray],
    parallel: int,
) -> None:
    """``arrays[name][start:stop] = values[name]`` for every name, ``parallel`` at a time; every
    write has finished (or failed) before the first error is raised."""
    limit = asyncio.Semaphore(parallel)

    async def write(name: str, value: np.ndarray) -> None:
        async with limit:
            await arrays[name].async_array.setitem(slice(start, stop), value)

    results = await asyncio.gather(
        *(write(name, value) for name, value in values.items()), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
