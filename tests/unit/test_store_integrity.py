"""Activation stores that cannot lie: the manifest, and what the reader and the writer do with it.

A chunk deleted, truncated or altered after the store was written is refused by name (at open
for the first two, on read for the third), never read back as zarr's fill value; a store without
a manifest is refused (the writer rewrites it); ``expect`` rejects unknown keys; a mismatch says
what the store was made from; xarray sees the provenance and warns about nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings

import numpy as np
import pytest
import torch

from mechflow.data.tokens import load_tokens
from mechflow.store import (
    DamagedStoreError,
    IncompleteStoreError,
    ProvenanceMismatchError,
    open_store,
    write_activation_store,
    write_array_store,
)
from mechflow.store.writer import MANIFEST_FILE, MANIFEST_LOG, TOKENS

PROV = {"model": "tiny", "model_hash": "m0", "dataset_sha256": "d0", "seed": 0}
HOOKS = ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"]
PATTERN = HOOKS[0]


class Killed(Exception):
    pass


def kill_after_first_chunk(start, stop):
    raise Killed


@pytest.fixture
def tokens(repeated_tokens_path):
    return load_tokens(repeated_tokens_path)  # 12 seq x 17 pos: 3 chunks of 5, 5, 2 rows


@pytest.fixture(params=[False, True], ids=["inline", "background"])
def write_mode(request, monkeypatch):
    import mechflow.store.writer as writer

    monkeypatch.setattr(writer, "background_writes", lambda device: request.param)


def write(model, tokens, out, **kwargs):
    kwargs = {
        "batch_size": 5, "chunk_size": 5, "dtype": "float32", "provenance": PROV,
        "progress": False,
    } | kwargs  # fmt: skip
    return write_activation_store(model, tokens, out, HOOKS, **kwargs)


@pytest.fixture
def store(tiny_model, tokens, tmp_path):
    return write(tiny_model, tokens, tmp_path / "s.zarr")


def chunk_files(out, name):
    return sorted(p for p in (out / name / "c").rglob("*") if p.is_file())


def flip_byte(path, at=-3):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def attrs(out):
    return json.loads((out / "zarr.json").read_text())["attributes"]


# --- the manifest ------------------------------------------------------------------------------
def test_manifest_records_every_chunk_before_complete(store):
    manifest = json.loads((store / MANIFEST_FILE).read_text())
    assert manifest["format"] == 1 and manifest["checksum"] == "crc32c"
    assert sorted(manifest["arrays"]) == sorted([TOKENS, *HOOKS])
    for name, chunks in manifest["arrays"].items():
        files = chunk_files(store, name)
        assert len(files) == len(chunks) == 3, name
        for path in files:
            rel = path.relative_to(store / name).as_posix()
            assert chunks[rel][0] == path.stat().st_size, rel
    record = attrs(store)["manifest"]
    assert record["chunks"] == 3 * 3 and len(record["sha256"]) == 64
    assert attrs(store)["complete"] is True
    assert not (store / MANIFEST_LOG).exists()  # the log is gone once the manifest is written


def test_complete_is_written_after_the_manifest(tiny_model, tokens, tmp_path, monkeypatch):
    """A run killed while finishing (here: consolidating) is incomplete; a rerun finishes it."""
    import mechflow.store.writer as writer

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(writer.zarr, "consolidate_metadata", killed)
    out = tmp_path / "s.zarr"
    with pytest.raises(Killed):
        write(tiny_model, tokens, out)
    assert (out / MANIFEST_FILE).is_file() and attrs(out)["complete"] is False
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        open_store(out)
    monkeypatch.undo()
    chunks = []
    write(tiny_model, tokens, out, on_chunk=lambda a, b: chunks.append(a))
    assert chunks == []  # every row was written: only the finishing is redone
    open_store(out).verify()


# --- the write path: every chunk written, errors on the writer thread surface -----------------
def test_chunks_equal_to_the_fill_value_are_written(tiny_model, tokens, tmp_path, write_mode):
    """All-zero chunks (token 0 everywhere, a dead ReLU's zeros) are data, not zarr's fill value:
    written and recorded like any other, also by arrays reopened from the group."""
    zeros = np.zeros_like(np.asarray(tokens))
    out = write(tiny_model, zeros, tmp_path / "s.zarr")
    assert len(chunk_files(out, TOKENS)) == 3
    store = open_store(out)
    store.verify()
    np.testing.assert_array_equal(store.numpy(TOKENS), zeros)

    toy = tmp_path / "toy.zarr"
    hidden = np.zeros((30, 1, 2), dtype=np.float32)
    write_array_store(toy, {"hook_hidden": hidden}, provenance=PROV)
    assert chunk_files(toy, "hook_hidden")
    np.testing.assert_array_equal(open_store(toy).numpy("hook_hidden"), hidden)


class DiskFull(OSError):
    pass


@pytest.mark.parametrize("failing_row", [5, 10], ids=["middle_chunk", "last_chunk"])
@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
def test_a_failed_chunk_write_surfaces_and_the_rerun_resumes(
    tiny_model, tokens, tmp_path, monkeypatch, background, failing_row
):
    """An error while writing a chunk (on the writer thread or not) is raised by the writer,
    not swallowed; rows_written stops before that chunk, and a rerun resumes from there."""
    import mechflow.store.writer as writer

    failing = f"{PATTERN}/c/{failing_row // 5}/0/0/0"
    original = writer._RecordingStore.set

    async def set_or_fail(self, key, value):
        if key == failing:
            raise DiskFull(f"no space left writing {key}")
        await original(self, key, value)

    monkeypatch.setattr(writer._RecordingStore, "set", set_or_fail)
    out = tmp_path / "s.zarr"
    threads = [t for t in threading.enumerate() if t.name == "activation-writer"]
    with pytest.raises(DiskFull, match="no space left"):
        write(tiny_model, tokens, out, background=background)
    assert [t for t in threading.enumerate() if t.name == "activation-writer"] == threads
    assert attrs(out)["rows_written"] == failing_row and attrs(out)["complete"] is False
    with pytest.raises(IncompleteStoreError):
        open_store(out)
    monkeypatch.undo()
    chunks = []
    write(tiny_model, tokens, out, background=background, on_chunk=lambda a, b: chunks.append(a))
    assert chunks == list(range(failing_row, 12, 5))  # resumed, not redone
    open_store(out).verify()


# --- the reader refuses a damaged store ----------------------------------------------------------
def test_deleted_chunk_refused_at_open_by_name(store):
    victim = chunk_files(store, PATTERN)[1]
    victim.unlink()
    with pytest.raises(DamagedStoreError, match=f"{victim}: chunk of array '{PATTERN}' is missing"):
        open_store(store)
    try:
        open_store(store)
    except DamagedStoreError as err:
        assert (err.array, err.chunk) == (PATTERN, victim)
        assert isinstance(err, IncompleteStoreError)  # callers that refuse unfinished stores


def test_truncated_chunk_refused_at_open(store):
    victim = chunk_files(store, TOKENS)[2]
    size = victim.stat().st_size
    victim.write_bytes(victim.read_bytes()[:-4])
    message = f"{victim}: chunk of array 'tokens' is {size - 4} bytes, the manifest says {size}"
    with pytest.raises(DamagedStoreError, match=message):
        open_store(store)


READS = {
    "numpy": lambda s: s.numpy(PATTERN),
    "numpy_rows": lambda s: s.numpy(PATTERN, [0, 1]),
    "torch": lambda s: s.torch(PATTERN, slice(0, 3)),
    "iter_batches": lambda s: list(s.iter_batches(PATTERN, 4)),
    "xarray": lambda s: s.xarray(PATTERN).isel(seq=slice(0, 2)).values,
    "array": lambda s: s.array(PATTERN)[:1],
    "verify": lambda s: s.verify(),
}


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
def test_altered_chunk_refused_on_read_by_name(store, read):
    victim = chunk_files(store, PATTERN)[0]  # rows 0..4
    flip_byte(victim)
    acts = open_store(store)  # same size: only its checksum tells
    with pytest.raises(DamagedStoreError, match=f"{victim}: chunk of array '{PATTERN}' has crc32c"):
        read(acts)
    assert acts.numpy(PATTERN, slice(5, 12)).shape[0] == 7  # the other chunks still read


def test_altered_tokens_chunk_refused_by_tokens(store):
    victim = chunk_files(store, TOKENS)[2]
    flip_byte(victim, at=0)
    acts = open_store(store)
    acts.tokens(slice(0, 10))
    with pytest.raises(DamagedStoreError, match=str(victim)):
        acts.tokens()


def test_altered_manifest_refused(store):
    path = store / MANIFEST_FILE
    path.write_text(path.read_text().replace("[", "[1", 1))
    with pytest.raises(DamagedStoreError, match="manifest altered"):
        open_store(store)


def test_store_without_manifest_refused_then_rewritten(tiny_model, tokens, store, caplog):
    """As written by the code before manifests: refused, and the writer does not call it done."""
    import zarr

    (store / MANIFEST_FILE).unlink()
    group = zarr.open_group(store, mode="r+", zarr_format=3)
    del group.attrs["manifest"]
    with pytest.raises(IncompleteStoreError, match="no chunk manifest.*rerun the step") as info:
        open_store(store)
    assert not isinstance(info.value, DamagedStoreError)
    chunks = []
    with caplog.at_level(logging.INFO, logger="mechflow.store.writer"):
        write(tiny_model, tokens, store, on_chunk=lambda a, b: chunks.append(a))
    assert chunks == [0, 5, 10] and "no chunk manifest" in caplog.text
    open_store(store).verify()


def test_writer_rewrites_a_damaged_complete_store(tiny_model, tokens, store, caplog):
    reference = open_store(store).numpy(PATTERN)
    flip_byte(chunk_files(store, PATTERN)[1])  # same size: only reading it shows the damage
    chunks = []
    with caplog.at_level(logging.INFO, logger="mechflow.store.writer"):
        write(tiny_model, tokens, store, on_chunk=lambda a, b: chunks.append(a))
    assert chunks == [0, 5, 10] and "has crc32c" in caplog.text
    np.testing.assert_array_equal(open_store(store).numpy(PATTERN), reference)


# --- resuming keeps the manifest whole ---------------------------------------------------------
def test_resumed_store_manifest_covers_every_chunk(tiny_model, tokens, tmp_path, write_mode):
    reference = write(tiny_model, tokens, tmp_path / "ref.zarr")
    out = tmp_path / "s.zarr"
    with pytest.raises(Killed):
        write(tiny_model, tokens, out, on_chunk=kill_after_first_chunk)
    logged = [json.loads(line)[0] for line in (out / MANIFEST_LOG).read_text().splitlines()]
    first = [chunk_files(out, name)[0].relative_to(out).as_posix() for name in [TOKENS, *HOOKS]]
    assert sorted(logged) == sorted(first)  # the chunk counted in rows_written, of each array
    with (out / MANIFEST_LOG).open("a") as fh:
        fh.write('["tokens/c/1/0", 3')  # a kill in the middle of appending a line
    chunks = []
    write(tiny_model, tokens, out, on_chunk=lambda a, b: chunks.append(a))
    assert chunks == [5, 10]  # resumed, not redone
    ours, theirs = (json.loads((s / MANIFEST_FILE).read_text()) for s in (out, reference))
    assert ours == theirs  # every chunk, the first included, with the same sizes and checksums
    open_store(out).verify()


def test_partial_store_without_log_is_restarted(tiny_model, tokens, tmp_path, caplog):
    """Chunks nobody recorded (a partial store from older code) are never blessed."""
    out = tmp_path / "s.zarr"
    with pytest.raises(Killed):
        write(tiny_model, tokens, out, on_chunk=kill_after_first_chunk)
    (out / MANIFEST_LOG).unlink()
    chunks = []
    with caplog.at_level(logging.INFO, logger="mechflow.store.writer"):
        write(tiny_model, tokens, out, on_chunk=lambda a, b: chunks.append(a))
    assert chunks == [0, 5, 10] and "is not in the manifest" in caplog.text
    open_store(out).verify()


def test_array_store_has_a_manifest(tmp_path):
    out = tmp_path / "toy.zarr"
    hidden = np.random.default_rng(0).standard_normal((30, 1, 2)).astype(np.float32)
    write_array_store(out, {"hook_hidden": hidden}, provenance=PROV)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert sorted(manifest["arrays"]) == ["hook_hidden", "tokens"]
    np.testing.assert_array_equal(open_store(out).numpy("hook_hidden"), hidden)
    victim = chunk_files(out, "hook_hidden")[0]
    victim.unlink()
    with pytest.raises(DamagedStoreError, match=f"{victim}: chunk of array 'hook_hidden'"):
        open_store(out)


# --- expect and provenance ---------------------------------------------------------------------
def test_expect_rejects_unknown_keys_before_reading(store, tmp_path):
    with pytest.raises(ValueError, match=r"unknown expect key\(s\) \['modle_hash'\]") as info:
        open_store(store, expect={"modle_hash": "m0"})
    assert "'model_hash'" in str(info.value) and "'dataset_sha256'" in str(info.value)
    with pytest.raises(ValueError, match="modle_hash"):  # not IncompleteStoreError: nothing read
        open_store(tmp_path / "nowhere.zarr", expect={"modle_hash": "m0"})
    open_store(store, expect={"model": "tiny", "seed": 0, "chunk_rows": 99})


def test_mismatch_names_what_the_store_was_made_from(tiny_model, tokens, tmp_path):
    made = {
        "model": "attn_only_1l", "model_hash": "a" * 64,
        "dataset": "results/datasets/repeated_random.npy", "dataset_sha256": "b" * 64,
    }  # fmt: skip
    out = write(tiny_model, tokens, tmp_path / "s.zarr", provenance=made)
    with pytest.raises(ProvenanceMismatchError) as info:
        open_store(out, expect={"model": "attn_only_2l", "model_hash": "c" * 64})
    assert str(info.value) == (
        f"{out}: provenance 'model_hash' does not match: made from model 'attn_only_1l' "
        f"(hash {'a' * 12}...), expected model 'attn_only_2l' (hash {'c' * 12}...)"
    )
    assert (info.value.key, info.value.expected, info.value.found) == (
        "model_hash",
        "c" * 64,
        "a" * 64,
    )
    with pytest.raises(ProvenanceMismatchError) as info:  # no expected name: only the hash
        open_store(out, expect={"dataset_sha256": "d" * 64})
    assert str(info.value).endswith(
        f"made from dataset 'results/datasets/repeated_random.npy' (hash {'b' * 12}...), "
        f"expected dataset hash {'d' * 12}..."
    )


# --- xarray ------------------------------------------------------------------------------------
def test_xarray_carries_the_provenance_and_reads_lazily(store, monkeypatch):
    from mechflow.store.reader import _VerifiedStore

    reads = []
    original = _VerifiedStore._read_checked

    def counted(self, key, *args):
        reads.append(key)
        return original(self, key, *args)

    monkeypatch.setattr(_VerifiedStore, "_read_checked", counted)
    acts = open_store(store)
    da = acts.xarray(PATTERN)
    assert reads == []  # nothing read yet
    assert da.attrs["model_hash"] == "m0" and da.attrs["hooks"] == HOOKS
    assert da.attrs["dimension_names"][PATTERN] == list(da.dims)
    assert json.loads(json.dumps(da.attrs)) == acts.provenance  # JSON-able, all of it
    da.attrs["model"] = "changed"
    assert acts.provenance["model"] == "tiny"  # a copy
    values = da.isel(seq=slice(6, 8)).values
    assert reads == [f"{PATTERN}/c/1/0/0/0"]  # one chunk, checked
    np.testing.assert_array_equal(values, acts.numpy(PATTERN, slice(6, 8)))


def test_plain_xarray_open_zarr_warns_nothing(store):
    import xarray as xr
    import zarr

    (store / ".snakemake_timestamp").touch()  # as Snakemake leaves in directory() outputs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(store)
        assert sorted(ds.data_vars) == sorted([TOKENS, *HOOKS])
        assert ds[PATTERN].dims == ("seq", "head_index", "query_pos", "key_pos")
        torch.testing.assert_close(
            torch.from_numpy(ds[PATTERN].values), open_store(store).torch(PATTERN)
        )
        group = zarr.open_group(store, mode="r")
        assert sorted(group.array_keys()) == sorted([TOKENS, *HOOKS])


def test_killed_store_is_still_refused_as_incomplete(tiny_model, tokens, tmp_path):
    out = tmp_path / "s.zarr"
    with pytest.raises(Killed):
        write(tiny_model, tokens, out, on_chunk=kill_after_first_chunk)
    with pytest.raises(IncompleteStoreError, match="incomplete") as info:
        open_store(out)
    assert not isinstance(info.value, DamagedStoreError)
