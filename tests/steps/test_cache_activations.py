"""cache_activations step: CLI → a complete store whose provenance names the model and dataset."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mechflow.artifacts import file_sha256
from mechflow.steps.cache_activations import main

HOOKS = ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"]


def argv(model_dir, tokens, out, *extra):
    args = ["--model-dir", str(model_dir), "--tokens", str(tokens), "--out", str(out)]
    for hook in HOOKS:
        args += ["--hook", hook]
    return [*args, "--batch-size", "4", "--threads", "1", "--device", "cpu", *extra]


def test_main_writes_complete_store(tiny_model_dir, repeated_tokens_path, tmp_path, caplog):
    from mechflow.data.tokens import load_tokens
    from mechflow.models.build import load_model, model_fingerprint
    from mechflow.store import open_store

    out = tmp_path / "acts" / "repeated.zarr"
    main(
        argv(
            tiny_model_dir, repeated_tokens_path, out, "--dtype", "float16", "--compression", "zstd"
        )
    )

    expect = {
        "model_hash": model_fingerprint(tiny_model_dir),
        "dataset_sha256": file_sha256(repeated_tokens_path),
        "hooks": HOOKS,
    }
    store = open_store(out, expect=expect)
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
        main(
            argv(
                tiny_model_dir,
                repeated_tokens_path,
                out,
                "--dtype",
                "float16",
                "--compression",
                "zstd",
            )
        )
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
