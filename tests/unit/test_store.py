"""Activation store: writer/reader round trip against TransformerLens, layout, refusal, resume."""

from __future__ import annotations

import logging
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from mechflow.data.tokens import load_tokens
from mechflow.store import (
    IncompleteStoreError,
    ProvenanceMismatchError,
    dimension_names,
    open_store,
    write_activation_store,
)

PROV = {"model": "tiny", "model_hash": "m0", "dataset_sha256": "d0", "seed": 0}
HOOKS = [
    "hook_embed",
    "hook_pos_embed",
    "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_attn_scores",
    "blocks.0.attn.hook_z",
    "blocks.0.ln1.hook_scale",
    "blocks.1.hook_resid_post",
]


class Killed(Exception):
    pass


@pytest.fixture
def tokens(repeated_tokens_path):
    return load_tokens(repeated_tokens_path)  # 12 seq x 17 pos


def write(model, tokens, out, hooks=HOOKS, **kwargs):
    kwargs = {
        "batch_size": 5,
        "chunk_size": 5,
        "dtype": "float32",
        "provenance": PROV,
        "progress": False,
    } | kwargs
    return write_activation_store(model, tokens, out, hooks, **kwargs)


def reference(model, tokens, hooks):
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            torch.tensor(np.asarray(tokens), dtype=torch.long), names_filter=hooks
        )
    return cache


@pytest.mark.parametrize(("dtype", "tol"), [("float32", None), ("float16", 2e-3)])
def test_round_trip_matches_run_with_cache(tiny_model, tokens, tmp_path, dtype, tol):
    store = open_store(write(tiny_model, tokens, tmp_path / "s.zarr", dtype=dtype))
    assert not any(point.fwd_hooks for point in tiny_model.hook_dict.values())  # none left
    cache = reference(tiny_model, tokens, HOOKS)
    assert store.hooks == HOOKS
    assert store.n_sequences == 12
    np.testing.assert_array_equal(store.tokens(), tokens)
    for hook in HOOKS:
        got = store.torch(hook)
        assert store.numpy(hook).dtype == np.dtype(dtype)
        kw = {} if tol is None else {"atol": tol, "rtol": tol}
        torch.testing.assert_close(got, cache[hook], **kw)


def test_full_model_hooks_and_unembed(tiny_arch, tokens, tmp_path):
    from dataclasses import replace

    from mechflow.models.build import build_model

    model = build_model(replace(tiny_arch, attn_only=False, d_mlp=32), seed=0)
    hooks = [
        "blocks.1.mlp.hook_pre",
        "blocks.0.mlp.hook_post",
        "ln_final.hook_normalized",
        "unembed.hook_out",
    ]
    store = open_store(write(model, tokens, tmp_path / "s.zarr", hooks=hooks))
    cache = reference(model, tokens, hooks)
    for hook in hooks:
        torch.testing.assert_close(store.torch(hook), cache[hook])
    assert store.dims("blocks.1.mlp.hook_pre") == ("seq", "pos", "d_mlp")
    assert store.dims("unembed.hook_out") == ("seq", "pos", "d_vocab")


def test_layout_dims_chunks_and_provenance(tiny_model, tokens, tmp_path):
    store = open_store(write(tiny_model, tokens, tmp_path / "s.zarr", batch_size=4, chunk_size=4))
    expected = {
        "hook_embed": ("seq", "pos", "d_model"),
        "blocks.0.attn.hook_pattern": ("seq", "head_index", "query_pos", "key_pos"),
        "blocks.0.attn.hook_attn_scores": ("seq", "head_index", "query_pos", "key_pos"),
        "blocks.0.attn.hook_z": ("seq", "pos", "head_index", "d_head"),
        "blocks.0.ln1.hook_scale": ("seq", "pos", "one"),
        "blocks.1.hook_resid_post": ("seq", "pos", "d_model"),
        "tokens": ("seq", "pos"),
    }
    for hook, dims in expected.items():
        assert store.dims(hook) == dims
        array = store.array(hook)
        assert array.chunks == (4, *array.shape[1:])  # chunked along seq only
    assert store.array("tokens").dtype == np.int32
    prov = store.provenance
    for key in (
        "model",
        "model_hash",
        "dataset_sha256",
        "seed",
        "hooks",
        "dtype",
        "compression",
        "batch_size",
        "package_versions",
        "git_revision",
        "created",
        "config_hash",
    ):
        assert key in prov, key
    assert prov["forward_kwargs"] == {"stop_at_layer": 2}


def test_chunks_buffer_several_batches(tiny_model, tokens, tmp_path, write_mode):
    chunks = []
    out = write(tiny_model, tokens, tmp_path / "s.zarr", batch_size=2, chunk_size=8,
                on_chunk=lambda a, b: chunks.append((a, b)))  # fmt: skip
    assert chunks == [(0, 8), (8, 12)]
    store = open_store(out)
    assert store.array("blocks.0.attn.hook_pattern").chunks[0] == 8
    assert store.provenance["chunk_rows"] == 8
    cache = reference(tiny_model, tokens, HOOKS)
    for hook in HOOKS:
        torch.testing.assert_close(store.torch(hook), cache[hook])
    # default: rows up to TARGET_CHUNK_BYTES, never beyond the data (not whole batches)
    auto = open_store(write(tiny_model, tokens, tmp_path / "auto.zarr", chunk_size=None))
    assert auto.provenance["chunk_rows"] == 12
    # chunk rows need not be a multiple of the batch size: batches straddle chunks
    chunks.clear()
    odd = write(tiny_model, tokens, tmp_path / "odd.zarr", chunk_size=7,
                on_chunk=lambda a, b: chunks.append((a, b)))  # fmt: skip
    assert chunks == [(0, 7), (7, 12)]
    for hook in HOOKS:
        torch.testing.assert_close(open_store(odd).torch(hook), cache[hook])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        write(tiny_model, tokens, tmp_path / "bad.zarr", chunk_size=0)


def test_background_writes_only_with_a_spare_core(monkeypatch):
    from mechflow.store.writer import background_writes

    monkeypatch.setattr(torch, "get_num_threads", lambda: 10_000)
    assert not background_writes("cpu")
    assert background_writes("cuda")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert background_writes("cpu") == (cores > 1)


def test_write_parallelism_leaves_the_forward_pass_its_cores(monkeypatch):
    from mechflow.store import writer

    monkeypatch.setattr(writer, "_cores", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert writer.write_parallelism("cpu", background=False) == 4  # the forward pass waits
    assert writer.write_parallelism("cpu", background=True) == 1
    assert writer.write_parallelism("cuda", background=True) == 3  # one core drives the GPU
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert writer.write_parallelism("cpu", background=True) == 1  # never none


def test_auto_chunk_rows():
    from mechflow.store.writer import TARGET_CHUNK_BYTES, auto_chunk_rows

    row = 128 * 128 * 4 * 2  # 2 hooks, d_model 128, 128 positions, fp32
    assert auto_chunk_rows(row, 10_000) == TARGET_CHUNK_BYTES // row  # no batch size involved
    assert auto_chunk_rows(10 * TARGET_CHUNK_BYTES, 10_000) == 1  # never below one row
    assert auto_chunk_rows(row, 20) == 20  # capped at the data


def test_forward_kwargs_skip_what_no_hook_needs():
    from mechflow.store.writer import forward_kwargs

    assert forward_kwargs(["hook_embed", "blocks.3.attn.hook_z", "blocks.1.hook_resid_post"]) == {
        "stop_at_layer": 4
    }
    assert forward_kwargs(["hook_pos_embed"]) == {"stop_at_layer": 0}
    assert forward_kwargs(["blocks.0.hook_resid_pre", "ln_final.hook_scale"]) == {
        "return_type": None
    }
    assert forward_kwargs(["unembed.hook_out", "ln_final.hook_scale"]) == {"return_type": "logits"}


def test_embed_only_store(tiny_model, tokens, tmp_path):
    hooks = ["hook_embed", "hook_pos_embed"]
    store = open_store(write(tiny_model, tokens, tmp_path / "s.zarr", hooks=hooks))
    cache = reference(tiny_model, tokens, hooks)
    for hook in hooks:
        torch.testing.assert_close(store.torch(hook), cache[hook])


def test_dimension_names_fallback():
    assert dimension_names("blocks.3.hook_resid_pre", (5, 7, 16)) == ("seq", "pos", "d_model")
    assert dimension_names("blocks.0.hook_mystery", (5, 7, 3, 2)) == (
        "seq",
        "pos",
        "blocks.0.hook_mystery.dim2",
        "blocks.0.hook_mystery.dim3",
    )
    # wrong rank for the kind -> fallback rather than a mislabelled axis
    assert dimension_names("blocks.0.attn.hook_pattern", (5, 7, 7))[:2] == ("seq", "pos")


@pytest.mark.parametrize("compression", ["none", "zstd", "blosc"])
def test_compression_round_trip(tiny_model, tokens, tmp_path, compression):
    hooks = ["blocks.0.hook_resid_post"]
    store = open_store(
        write(tiny_model, tokens, tmp_path / "s.zarr", hooks=hooks, compression=compression)
    )
    codecs = store.array(hooks[0]).compressors
    assert (len(codecs) == 0) == (compression == "none")
    torch.testing.assert_close(
        store.torch(hooks[0]), reference(tiny_model, tokens, hooks)[hooks[0]]
    )


def kill_after_first_chunk(start, stop):
    raise Killed(f"simulated kill after rows {start}:{stop}")


def test_incomplete_store_refused(tiny_model, tokens, tmp_path, write_mode):
    out = tmp_path / "s.zarr"
    with pytest.raises(Killed):
        write(tiny_model, tokens, out, on_chunk=kill_after_first_chunk)
    with pytest.raises(IncompleteStoreError, match=str(out)):
        open_store(out)
    with pytest.raises(IncompleteStoreError, match="not an activation store"):
        open_store(tmp_path / "nothing_here.zarr")


def test_provenance_mismatch_refused(tiny_model, tokens, tmp_path):
    out = write(tiny_model, tokens, tmp_path / "s.zarr")
    open_store(out, expect={"model_hash": "m0", "hooks": HOOKS[:2]})
    match = (
        "'model_hash' does not match: made from model 'tiny' .hash m0., expected model hash other"
    )
    with pytest.raises(ProvenanceMismatchError, match=match) as info:
        open_store(out, expect={"model_hash": "other"})
    assert (info.value.key, info.value.expected, info.value.found) == ("model_hash", "other", "m0")
    with pytest.raises(ProvenanceMismatchError, match="hooks"):
        open_store(out, expect={"hooks": ["blocks.1.attn.hook_pattern"]})


@pytest.fixture(params=[False, True], ids=["inline", "background"])
def write_mode(request, monkeypatch):
    """Both write paths: inline (torch uses every core) and on the writer thread (GPU)."""
    import mechflow.store.writer as writer

    monkeypatch.setattr(writer, "background_writes", lambda device: request.param)
    return request.param


def test_resume_after_kill_skips_finished_chunks(tiny_model, tokens, tmp_path, write_mode):
    reference_store = open_store(write(tiny_model, tokens, tmp_path / "ref.zarr"))
    out = tmp_path / "s.zarr"
    with pytest.raises(Killed):
        write(tiny_model, tokens, out, on_chunk=kill_after_first_chunk)
    chunks = []
    write(tiny_model, tokens, out, on_chunk=lambda a, b: chunks.append((a, b)))
    assert chunks == [(5, 10), (10, 12)]  # rows 0:5 were not recomputed
    store = open_store(out)
    assert store.provenance["config_hash"] == reference_store.provenance["config_hash"]
    for name in ["tokens", *HOOKS]:
        np.testing.assert_array_equal(store.numpy(name), reference_store.numpy(name))


def test_resume_edge_cases(tiny_model, tokens, tmp_path):
    out = tmp_path / "s.zarr"

    def kill_at_last_chunk(start, stop):
        if stop == 12:
            raise Killed

    with pytest.raises(Killed):  # all rows written, killed before ``complete``
        write(tiny_model, tokens, out, on_chunk=kill_at_last_chunk)
    chunks = []
    write(tiny_model, tokens, out, on_chunk=lambda a, b: chunks.append(a))
    assert chunks == [] and open_store(out).n_sequences == 12

    other = tmp_path / "t.zarr"
    with pytest.raises(Killed):
        write(tiny_model, tokens, other, on_chunk=kill_after_first_chunk)
    shutil.rmtree(other / HOOKS[2])  # a damaged partial store is rewritten, not resumed
    write(tiny_model, tokens, other, on_chunk=lambda a, b: chunks.append(a))
    assert chunks == [0, 5, 10]
    np.testing.assert_array_equal(
        open_store(other).numpy(HOOKS[2]), open_store(out).numpy(HOOKS[2])
    )


def test_rerun_complete_is_noop_and_changed_provenance_restarts(
    tiny_model, tokens, tmp_path, caplog
):
    out = tmp_path / "s.zarr"
    write(tiny_model, tokens, out)
    chunks = []
    with caplog.at_level(logging.INFO, logger="mechflow.store.writer"):
        write(tiny_model, tokens, out, on_chunk=lambda a, b: chunks.append(a))
    assert chunks == [] and "nothing to do" in caplog.text
    # an incomplete store written with another dtype is deleted, not resumed
    with pytest.raises(Killed):
        write(tiny_model, tokens, out, dtype="float16", on_chunk=kill_after_first_chunk)
    with caplog.at_level(logging.INFO, logger="mechflow.store.writer"):
        write(tiny_model, tokens, out, on_chunk=lambda a, b: chunks.append(a))
    assert chunks == [0, 5, 10] and "provenance differs (dtype)" in caplog.text
    assert open_store(out).numpy(HOOKS[0]).dtype == np.float32


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        (["blocks.0.hook_resid_post", "blocks.7.hook_resid_post"], "blocks.7.hook_resid_post"),
        (["blocks.0.attn.hook_result"], "do not fire"),  # exists, but use_attn_result is off
    ],
)
def test_bad_hook_refused_before_writing(tiny_model, tokens, tmp_path, hooks, message):
    out = tmp_path / "s.zarr"
    with pytest.raises(ValueError, match=message):
        write(tiny_model, tokens, out, hooks=hooks)
    assert not out.exists()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda t: np.where(t == 3, 20, t), r"\[0, 20\)"),
        (lambda t: np.tile(t, (1, 2)), "n_ctx"),
        (lambda t: t[0], "2-D"),
    ],
)
def test_bad_tokens_refused(tiny_model, tokens, tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        write(tiny_model, bad(np.asarray(tokens)), tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_non_store_directory_not_overwritten(tiny_model, tokens, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "data.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a zarr store"):
        write(tiny_model, tokens, out)
    assert (out / "data.txt").read_text() == "keep me"


def test_xarray_view_and_batches(tiny_model, tokens, tmp_path):
    out = write(tiny_model, tokens, tmp_path / "s.zarr")
    (out / ".snakemake_timestamp").touch()  # as Snakemake leaves in directory() outputs
    store = open_store(out)
    hook = "blocks.0.attn.hook_pattern"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        da = store.xarray(hook)
    assert da.dims == ("seq", "head_index", "query_pos", "key_pos")
    np.testing.assert_array_equal(da.isel(seq=slice(3, 7)).values, store.numpy(hook, slice(3, 7)))
    assert not np.isnan(da.values).any()  # masked attention (0) must stay 0, not become NaN

    batches = list(store.iter_batches(hook))
    assert [len(b) for b in batches] == [5, 5, 2]  # default batch = chunk
    np.testing.assert_array_equal(np.concatenate(batches), store.numpy(hook))
    torch_batches = list(store.iter_batches(hook, 7, as_torch=True, dtype=torch.float64))
    assert torch_batches[0].dtype == torch.float64 and len(torch_batches) == 2
    np.testing.assert_array_equal(store.numpy(hook, [0, 11]), store.numpy(hook)[[0, 11]])
    with pytest.raises(KeyError, match="blocks.1.hook_resid_post"):
        store.numpy("blocks.5.hook_resid_post")


# --- identity is content: batch size and chunk rows are speed and layout ----------------------
def array_files(store):
    """Every file of every array (metadata and chunks), by path: the arrays' bytes on disk."""
    return {
        str(path.relative_to(store)): path.read_bytes()
        for name in ["tokens", *HOOKS]
        for path in sorted((store / name).rglob("*"))
        if path.is_file()
    }


def test_complete_store_reused_whatever_batch_size_and_chunk_rows(
    tiny_model, tokens, tmp_path, caplog
):
    out = write(tiny_model, tokens, tmp_path / "s.zarr", batch_size=5, chunk_size=5)
    (out / "marker").touch()  # a rewrite would delete it
    stamp = (out / "zarr.json").stat().st_mtime_ns
    chunks = []
    for batch_size, chunk_size in [(3, 5), (7, None), (64, 4)]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mechflow.store.writer"):
            write(tiny_model, tokens, out, batch_size=batch_size, chunk_size=chunk_size,
                  on_chunk=lambda a, b: chunks.append(a))  # fmt: skip
        assert chunks == [] and "nothing to do" in caplog.text, (batch_size, chunk_size)
    assert (out / "marker").exists() and (out / "zarr.json").stat().st_mtime_ns == stamp
    store = open_store(out, expect={"model_hash": "m0", "batch_size": 64, "chunk_rows": 12})
    assert (store.provenance["batch_size"], store.provenance["chunk_rows"]) == (5, 5)
    with pytest.raises(ProvenanceMismatchError, match="dtype"):
        open_store(out, expect={"dtype": "float16"})


@pytest.mark.parametrize("chunk_size", [None, 5], ids=["auto_rows", "explicit_rows"])
def test_store_bytes_identical_whatever_batch_size(
    tiny_model, tokens, tmp_path, monkeypatch, write_mode, chunk_size
):
    import mechflow.store.writer as writer

    row_bytes = 9044  # the HOOKS of the tiny model over 17 positions, fp32
    monkeypatch.setattr(writer, "TARGET_CHUNK_BYTES", 5 * row_bytes)  # auto: 5-row chunks
    stores, chunks = {}, []
    for batch_size in (3, 7, 64, 5):  # straddling, straddling, several chunks per batch, dividing
        chunks.clear()
        stores[batch_size] = write(tiny_model, tokens, tmp_path / f"b{batch_size}.zarr",
                                   batch_size=batch_size, chunk_size=chunk_size,
                                   on_chunk=lambda a, b: chunks.append((a, b)))  # fmt: skip
        assert chunks == [(0, 5), (5, 10), (10, 12)], batch_size  # whole aligned chunks only
    reference = array_files(stores[5])
    assert len(reference) > len(HOOKS) + 1  # chunk files, not only metadata
    for batch_size in (3, 7, 64):
        assert array_files(stores[batch_size]) == reference, batch_size
        a, b = open_store(stores[batch_size]), open_store(stores[5])
        assert a.provenance["config_hash"] == b.provenance["config_hash"]
        for name in ["tokens", *HOOKS]:
            assert a.numpy(name).tobytes() == b.numpy(name).tobytes(), (batch_size, name)


@pytest.mark.parametrize("chunk_size", [None, 5], ids=["auto_rows", "explicit_rows"])
def test_store_bytes_identical_with_and_without_the_writer_thread(
    tiny_model, tokens, tmp_path, chunk_size
):
    stores = {
        background: write(tiny_model, tokens, tmp_path / f"{background}.zarr", batch_size=3,
                          chunk_size=chunk_size, compression="zstd", background=background)
        for background in (False, True)
    }  # fmt: skip
    assert array_files(stores[True]) == array_files(stores[False])
    manifests = [(s / "manifest.json").read_bytes() for s in stores.values()]
    assert manifests[0] == manifests[1]  # the same chunks, sizes and crc32c, in the same order


@pytest.mark.parametrize(("killed_batch", "resumed_batch"), [(5, 3), (3, 7), (2, 64)])
def test_resume_with_another_batch_size_keeps_the_store_layout(
    tiny_model, tokens, tmp_path, caplog, write_mode, killed_batch, resumed_batch
):
    reference = write(tiny_model, tokens, tmp_path / "ref.zarr", batch_size=12, chunk_size=5)
    out = tmp_path / "s.zarr"
    with pytest.raises(Killed):
        write(tiny_model, tokens, out, batch_size=killed_batch, chunk_size=5,
              on_chunk=kill_after_first_chunk)  # fmt: skip
    chunks = []
    with caplog.at_level(logging.INFO, logger="mechflow.store.writer"):
        # the default chunk rows would now be 12: the partial store keeps its own 5
        write(tiny_model, tokens, out, batch_size=resumed_batch, chunk_size=None,
              on_chunk=lambda a, b: chunks.append((a, b)))  # fmt: skip
    assert chunks == [(5, 10), (10, 12)]  # rows 0:5 were not recomputed
    assert "keeping its 5 rows per chunk" in caplog.text
    assert "provenance differs" not in caplog.text
    store, ref = open_store(out), open_store(reference)
    assert store.provenance["config_hash"] == ref.provenance["config_hash"]
    assert array_files(out) == array_files(reference)
    for name in ["tokens", *HOOKS]:
        np.testing.assert_array_equal(store.numpy(name), ref.numpy(name))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"dtype": "float16"}, "dtype"),
        ({"compression": "zstd"}, "compression"),
        ({"provenance": PROV | {"model_hash": "m1"}}, "model_hash"),
        ({"provenance": PROV | {"dataset_sha256": "d1"}}, "dataset_sha256"),
        ({"hooks": HOOKS[:3]}, "hooks"),
    ],
)
def test_content_change_makes_a_complete_store_stale(
    tiny_model, tokens, tmp_path, caplog, change, key
):
    out = write(tiny_model, tokens, tmp_path / "s.zarr")
    (out / "marker").touch()
    chunks = []
    with caplog.at_level(logging.INFO, logger="mechflow.store.writer"):
        write(tiny_model, tokens, out, batch_size=3, on_chunk=lambda a, b: chunks.append(a),
              **change)  # fmt: skip
    assert chunks == [0, 5, 10] and f"provenance differs ({key})" in caplog.text
    assert not (out / "marker").exists()  # deleted and rewritten, not patched
    store = open_store(out)
    for name, value in change.items():
        expected = value if name != "provenance" else value[key]
        assert store.provenance[key] == expected, name
