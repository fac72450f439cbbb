"""SAE trainer: the shuffled stream, resuming from checkpoints, divergence, schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechflow.saes.config import SAEConfig
from mechflow.saes.training import (
    ShuffledBatches,
    StoreSource,
    TensorSource,
    lr_at,
    train_sae,
)

HOOK = "blocks.1.hook_resid_post"


def id_source(n_tokens: int, chunk: int) -> TensorSource:
    """Token i carries the value i in every coordinate, so batches reveal which rows they hold."""
    ids = torch.arange(n_tokens, dtype=torch.float32)
    return TensorSource(ids[:, None].expand(n_tokens, 3).clone(), chunk_tokens=chunk)


def ids_of(batch: torch.Tensor) -> np.ndarray:
    return batch[:, 0].numpy().astype(np.int64)


@pytest.mark.parametrize("prefetch", [True, False])
def test_stream_covers_every_row_once_per_epoch_in_a_bounded_buffer(prefetch):
    source = id_source(6000, chunk=500)  # 12 chunks
    stream = ShuffledBatches(source, 200, seed=3, buffer_tokens=1500, prefetch=prefetch)
    batches = iter(stream)
    epoch1 = [ids_of(next(batches)) for _ in range(30)]  # 30 * 200 = one epoch
    epoch2 = [ids_of(next(batches)) for _ in range(30)]
    for epoch in (epoch1, epoch2):
        np.testing.assert_array_equal(np.sort(np.concatenate(epoch)), np.arange(6000))
    assert not np.array_equal(np.concatenate(epoch1), np.concatenate(epoch2))  # reshuffled
    # a batch mixes several randomly chosen chunks, and no more than a group is ever held
    assert all(len(np.unique(b // 500)) >= 2 for b in epoch1)
    assert len(np.unique(epoch1[0] // 500)) == 3
    assert stream.max_group_tokens <= 1500 + 500


def test_stream_batches_straddle_groups_without_dropping_rows():
    source = id_source(6000, chunk=500)
    batches = iter(ShuffledBatches(source, 350, seed=0, buffer_tokens=1200, prefetch=False))
    seen = np.concatenate([ids_of(next(batches)) for _ in range(17)])  # 5950 tokens
    assert len(np.unique(seen)) == 5950


def test_stream_resumes_anywhere():
    source = id_source(3000, chunk=250)
    full = iter(ShuffledBatches(source, 128, seed=1, buffer_tokens=700))
    expected = [ids_of(next(full)) for _ in range(60)]  # crosses two epochs
    for start in (1, 7, 23, 41):
        resumed = iter(
            ShuffledBatches(source, 128, seed=1, buffer_tokens=700, start_token=start * 128)
        )
        for step in range(start, 60):
            np.testing.assert_array_equal(ids_of(next(resumed)), expected[step])


def test_store_source_reads_whole_chunks_and_skips_bos(tiny_model, repeated_tokens_path, tmp_path):
    from mechflow.data.tokens import load_tokens
    from mechflow.store import open_store, write_activation_store

    tokens = load_tokens(repeated_tokens_path)  # 12 sequences x 17 positions
    out = write_activation_store(
        tiny_model, tokens, tmp_path / "s.zarr", [HOOK], batch_size=4, chunk_size=4,
        provenance={"model_hash": "m", "dataset_sha256": "d"}, progress=False,
    )  # fmt: skip
    store = open_store(out)
    acts = store.numpy(HOOK)  # seq pos d_model
    source = StoreSource(store, HOOK, skip_bos=True)
    assert (source.n_chunks, source.d_in, source.n_tokens) == (3, 16, 12 * 16)
    np.testing.assert_array_equal(source.read_chunk(1).numpy(), acts[4:8, 1:].reshape(-1, 16))
    with_bos = StoreSource(store, HOOK, skip_bos=False)
    assert with_bos.chunk_tokens(0) == 4 * 17
    batches = iter(ShuffledBatches(source, 16, seed=0, buffer_tokens=64))
    rows = torch.cat([next(batches) for _ in range(12)]).numpy()
    expected = acts[:, 1:].reshape(-1, 16)
    order = np.lexsort(rows.T)
    np.testing.assert_array_equal(rows[order], expected[np.lexsort(expected.T)])
    with pytest.raises(ValueError, match="hook_pattern"):
        pattern = "blocks.0.attn.hook_pattern"
        out2 = write_activation_store(
            tiny_model, tokens, tmp_path / "p.zarr", [pattern], batch_size=4,
            provenance={"model_hash": "m", "dataset_sha256": "d"}, progress=False,
        )  # fmt: skip
        StoreSource(open_store(out2), pattern)


def toy_source() -> TensorSource:
    from mechflow.saes.synthetic import sparse_feature_data

    data = sparse_feature_data(n_tokens=4096, d_in=16, n_features=32, p_active=0.05, seed=1)
    return TensorSource(data.acts * 5 + 1, chunk_tokens=512)


def toy_config(arch: str, **overrides) -> SAEConfig:
    settings = {
        "architecture": arch, "d_in": 16, "d_sae": 48, "hook_name": HOOK, "batch_size": 128,
        "total_tokens": 128 * 24, "lr": 3e-3, "shuffle_buffer_tokens": 1024,
        "checkpoint_every": 5, "log_every": 4, "dead_after_tokens": 256,
        "resample_every_tokens": 128 * 4, "lr_warmup_fraction": 0.1,
    }  # fmt: skip
    settings.update(
        {"relu": {"l1_coefficient": 1.0}, "jumprelu": {"l1_coefficient": 0.05}}.get(arch, {"k": 3})
    )
    settings.update(overrides)
    return SAEConfig(**settings)


class Killed(Exception):
    pass


@pytest.mark.parametrize("arch", ["relu", "batchtopk", "jumprelu"])
def test_resumed_run_equals_uninterrupted(arch, tmp_path):
    # relu: a high lr and penalty kill latents early, so resampling runs at step 12
    cfg = toy_config(arch, **({"l1_coefficient": 3.0, "lr": 0.1} if arch == "relu" else {}))
    straight = train_sae(cfg, toy_source(), progress=False)
    ckpt = tmp_path / "sae.ckpt.pt"

    def kill_at_13(step):
        if step == 13:
            raise Killed

    with pytest.raises(Killed):
        train_sae(cfg, toy_source(), checkpoint=ckpt, progress=False, on_step=kill_at_13)
    assert ckpt.is_file()  # written at step 10
    resumed = train_sae(cfg, toy_source(), checkpoint=ckpt, progress=False)
    assert resumed.resumed_from == 10
    for name, value in straight.sae.state_dict().items():
        assert torch.equal(value, resumed.sae.state_dict()[name]), name
    assert straight.log.equals(resumed.log)
    if arch == "relu":
        assert straight.log["resampled"].iloc[-1] > 0  # resampling ran (and was resumed)


def test_checkpoint_of_another_config_is_ignored(tmp_path):
    ckpt = tmp_path / "c.pt"

    def kill(step):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train_sae(toy_config("topk"), toy_source(), checkpoint=ckpt, progress=False, on_step=kill)
    result = train_sae(toy_config("topk", k=4), toy_source(), checkpoint=ckpt, progress=False)
    assert result.resumed_from == 0


def test_nan_loss_raises_and_writes_no_checkpoint(tmp_path):
    acts = toy_source().acts.clone()
    acts[100] = float("inf")
    ckpt = tmp_path / "c.pt"
    cfg = toy_config("relu", normalize_activations="none", checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        train_sae(cfg, TensorSource(acts, chunk_tokens=512), checkpoint=ckpt, progress=False)
    assert not ckpt.exists()


def test_width_mismatch_is_refused():
    with pytest.raises(ValueError, match="d_in"):
        train_sae(toy_config("relu", d_in=8, d_sae=16), toy_source(), progress=False)


def test_lr_schedule_warms_up_and_decays_to_zero():
    cfg = toy_config("relu", total_tokens=128 * 100, lr_warmup_fraction=0.1, lr_decay_fraction=0.2)
    lrs = [lr_at(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(cfg.lr / 10) and lrs[9] == pytest.approx(cfg.lr)
    assert lrs[50] == cfg.lr and lrs[99] == pytest.approx(cfg.lr / 20)
    assert all(a >= b for a, b in zip(lrs[80:], lrs[81:], strict=False))


def test_trained_sae_takes_unscaled_inputs():
    source = toy_source()
    cfg = toy_config("topk", total_tokens=128 * 40)
    result = train_sae(cfg, source, progress=False)
    assert result.input_scale != pytest.approx(1.0)
    x = source.acts[:512]
    with torch.no_grad():
        recon = result.sae(x).reconstruction
    fvu = ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert float(fvu) < 0.5


def test_jumprelu_sweep_spans_l0_in_a_short_run():
    """Three coefficients, 120 steps: L0 falls monotonically by more than 3x (issue 11: from
    a threshold of 0.001 every such run ended at the same L0, Adam lifting it ~lr per step)."""
    from mechflow.saes.evaluate import activation_metrics
    from mechflow.saes.synthetic import sparse_feature_data

    data = sparse_feature_data(
        n_tokens=8192, d_in=16, n_features=48, p_active=0.1, seed=1, noise=0.05
    )
    source = TensorSource(data.acts, chunk_tokens=1024)
    l0s, evs = [], []
    for coefficient in (0.1, 0.5, 2.5):
        cfg = toy_config(
            "jumprelu", d_sae=64, batch_size=256, total_tokens=256 * 120,
            l1_coefficient=coefficient, checkpoint_every=0, log_every=40,
            shuffle_buffer_tokens=4096, lr_warmup_fraction=0.01,
        )  # fmt: skip
        metrics = activation_metrics(train_sae(cfg, source, progress=False).sae, [data.acts])
        l0s.append(metrics["l0"])
        evs.append(metrics["explained_variance"])
    assert l0s[0] > l0s[1] > l0s[2] and l0s[0] > 3 * l0s[2], l0s
    assert evs[0] > 0.8, evs
