"""cache_activations step: CLI → a complete store whose provenance names the model and dataset."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mechflow.artifacts import file_sha256
from mechflow.steps.cache_activations import main

HOOKS = ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"]


def argv(model_dir, tokens, out, *extra, dtype="float32", compression="zstd", batch_size=4):
    """The flags the rule passes (--dtype and --compression are required), then ``extra``."""
    args = ["--model-dir", str(model_dir), "--tokens", str(tokens), "--out", str(out)]
    for hook in HOOKS:
        args += ["--hook", hook]
    args += ["--dtype", dtype, "--compression", compression]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    return [*args, "--threads", "1", "--device", "cpu", *extra]


def test_main_writes_complete_store(tiny_model_dir, repeated_tokens_path, tmp_path, caplog):
    from mechflow.data.tokens import load_tokens
    from mechflow.models.build import load_model, model_fingerprint
    from mechflow.store import open_store

    out = tmp_path / "acts" / "repeated.zarr"
    main(argv(tiny_model_dir, repeated_tokens_path, out, dtype="float16", compression="zstd"))

    expect = {
        "model_hash": model_fingerprint(tiny_model_dir),
        "dataset_sha256": file_sha256(repeated_tokens_path),
        "hooks": HOOKS,
    }
    store = open_store(out, expect=expect)
    store.verify()  # every chunk as its manifest records it
    prov = store.provenance
    assert prov["model"] == tiny_model_dir.name
    assert (prov["dtype"], prov["compression"], prov["batch_size"], prov["seed"]) == (
        "float16",
        "zstd",
        4,
        0,
    )
    tokens = load_tokens(repeated_tokens_path)
    np.testing.assert_array_equal(store.tokens(), tokens)
    model = load_model(tiny_model_dir)
    _, cache = model.run_with_cache(
        torch.tensor(np.asarray(tokens), dtype=torch.long), names_filter=HOOKS
    )
    for hook in HOOKS:
        torch.testing.assert_close(store.torch(hook), cache[hook], atol=2e-3, rtol=2e-3)

    with caplog.at_level(logging.INFO):
        main(argv(tiny_model_dir, repeated_tokens_path, out, dtype="float16", compression="zstd"))
    assert "nothing to do" in caplog.text


def test_main_refuses_bad_inputs(tiny_model_dir, repeated_tokens_path, tmp_path):
    out = tmp_path / "s.zarr"
    with pytest.raises(ValueError, match="--hook.*resid_post_typo"):
        main(
            [*argv(tiny_model_dir, repeated_tokens_path, out), "--hook", "blocks.0.resid_post_typo"]
        )
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        main(argv(tiny_model_dir, tmp_path / "missing.npy", out))
    with pytest.raises(ValueError, match="blocks.9.hook_resid_post"):
        main(
            [*argv(tiny_model_dir, repeated_tokens_path, out), "--hook", "blocks.9.hook_resid_post"]
        )
    assert not out.exists()


def test_dtype_and_compression_are_required(tiny_model_dir, repeated_tokens_path, tmp_path):
    """The rule always passes them; a default here could silently differ from the schema's."""
    out = tmp_path / "s.zarr"
    full = argv(tiny_model_dir, repeated_tokens_path, out)
    for flag in ("--dtype", "--compression"):
        at = full.index(flag)
        with pytest.raises(SystemExit):
            main(full[:at] + full[at + 2 :])
    assert not out.exists()


def test_rerun_with_another_batch_size_redoes_nothing(
    tiny_model_dir, repeated_tokens_path, tmp_path, caplog
):
    """--batch-size is a machine setting: a complete store is kept whatever batch size wrote it."""
    from mechflow.steps.cache_activations import DEFAULT_BATCH_SIZE
    from mechflow.store import open_store

    out = tmp_path / "s.zarr"
    main(argv(tiny_model_dir, repeated_tokens_path, out, batch_size=None))
    assert open_store(out).provenance["batch_size"] == DEFAULT_BATCH_SIZE == 64
    (out / "marker").touch()  # a rewrite would delete it
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    for batch_size in (3, 5, 7):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            main(argv(tiny_model_dir, repeated_tokens_path, out, batch_size=batch_size))
        assert "nothing to do" in caplog.text, batch_size
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert (out / "marker").exists()
    # content still decides: another dtype or compression rewrites the store
    main(argv(tiny_model_dir, repeated_tokens_path, out, compression="none", batch_size=5))
    assert not (out / "marker").exists()
    assert open_store(out).provenance["compression"] == "none"
