"""The LM trainer's schedule, gradient clipping, validation loss and log-spaced checkpoints."""

import math

import numpy as np
import pytest
import torch

from mechflow.data.tokens import spread_rows
from mechflow.models.build import build_model
from mechflow.models.config import Architecture, TrainingConfig
from mechflow.models.train import lr_factor, train, validation_loss
from mechflow.wiring import checkpoint_steps, log_spaced

ARCH = Architecture(
    n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=12, d_vocab=20, attn_only=True
)


def tokens(n=32, seed=0):
    return np.random.default_rng(seed).integers(0, 20, size=(n, 12), dtype=np.int32)


def test_the_constant_schedule_is_the_warm_up_it_always_was():
    cfg = TrainingConfig(steps=50, batch_size=4, warmup_steps=10)
    old = [min(1.0, (s + 1) / 10) for s in range(50)]  # the LambdaLR of earlier versions
    assert [lr_factor(cfg, s) for s in range(50)] == old


def test_cosine_warms_up_then_decays_to_its_floor():
    cfg = TrainingConfig(
        steps=100, batch_size=4, warmup_steps=10, lr_schedule="cosine", min_lr_fraction=0.1
    )
    factors = [lr_factor(cfg, s) for s in range(100)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    after = factors[10:]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    assert factors[-1] == pytest.approx(0.1) and factors[10] < 1.0
    assert factors[54] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_bad_training_settings_name_their_key():
    with pytest.raises(ValueError, match="training.lr_schedule"):
        TrainingConfig(steps=10, batch_size=2, lr_schedule="linear")
    with pytest.raises(ValueError, match="training.eval_every"):
        TrainingConfig(steps=10, batch_size=2, log_every=10, eval_every=15)
    with pytest.raises(ValueError, match="training.grad_clip"):
        TrainingConfig(steps=10, batch_size=2, grad_clip=0.0)


def test_gradient_clipping_bounds_the_norm_each_step(monkeypatch):
    norms = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [
            p.grad for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    cfg = TrainingConfig(steps=5, batch_size=8, lr=1e-2, seed=0)
    train(build_model(ARCH, seed=0), tokens(), cfg, progress=False)
    unclipped, norms[:] = list(norms), []
    clip = min(unclipped) / 4
    cfg = TrainingConfig(steps=5, batch_size=8, lr=1e-2, seed=0, grad_clip=clip)
    train(build_model(ARCH, seed=0), tokens(), cfg, progress=False)
    assert max(unclipped) > clip  # the test can fail: clipping had something to clip
    assert max(norms) <= clip * (1 + 1e-5)


def test_validation_loss_is_logged_every_eval_every_and_at_the_end():
    held_out = tokens(16, seed=1)
    cfg = TrainingConfig(steps=25, batch_size=8, log_every=5, eval_every=10, eval_sequences=12)
    model = build_model(ARCH, seed=0)
    log = train(model, tokens(), cfg, progress=False, validation=held_out)
    assert list(log.columns) == ["step", "loss", "lr", "val_loss"]
    evaluated = log.dropna(subset=["val_loss"])["step"].tolist()
    assert evaluated == [10, 20, 25]
    data = torch.from_numpy(spread_rows(held_out, 12).astype(np.int64))  # all parts of the split
    assert log["val_loss"].iloc[-1] == pytest.approx(validation_loss(model, data, 8), rel=1e-6)
    # without validation the log keeps its three columns
    plain = train(
        build_model(ARCH, seed=0), tokens(), TrainingConfig(steps=5, batch_size=8), progress=False
    )
    assert list(plain.columns) == ["step", "loss", "lr"]


def test_log_spaced_checkpoints_are_dense_early():
    assert log_spaced(1000, 4) == [1, 10, 100, 1000]
    points = checkpoint_steps({"steps": 3000, "checkpoint_every": 1000, "log_checkpoints": 12})
    assert points[:5] == [0, 1, 2, 4, 9] and points[-1] == 3000 and 1000 in points
    assert checkpoint_steps({"steps": 10, "log_checkpoints": 1}) == [10]
