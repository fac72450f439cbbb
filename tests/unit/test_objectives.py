"""The trainer's objectives: next-token (the default, unchanged), a padded bidirectional classifier
read at position 0, soft targets over legal next moves, and resume identities that tell them apart."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechflow.models.build import build_model
from mechflow.models.config import Architecture, TrainingConfig
from mechflow.models.objectives import (
    ClassifyAtPosition,
    NextToken,
    SoftTargetNextMove,
    masked_logits,
)
from mechflow.models.train import run_identity, train, validation_loss

START, PAD, END, OPEN, CLOSE = range(5)  # the balanced-bracket vocabulary
BRACKETS = Architecture(
    n_layers=2,
    d_model=16,
    n_heads=2,
    d_head=8,
    n_ctx=8,
    d_vocab=5,
    d_vocab_out=2,
    d_mlp=32,
    attention_dir="bidirectional",
)
LM = Architecture(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=8, d_vocab=12, attn_only=True)


def bracket_data(n, seed=0):
    """``[start] brackets [end] [pad]...`` (1 to 5 brackets); label: the first one is '('."""
    rng = np.random.default_rng(seed)
    tokens = np.full((n, BRACKETS.n_ctx), PAD, dtype=np.int64)
    tokens[:, 0] = START
    for row, length in enumerate(rng.integers(1, BRACKETS.n_ctx - 2, size=n)):
        tokens[row, 1 : 1 + length] = rng.choice([OPEN, CLOSE], size=length)
        tokens[row, 1 + length] = END
    return {"tokens": tokens, "labels": (tokens[:, 1] == OPEN).astype(np.int64)}


def state_bytes(model):
    return b"".join(v.numpy().tobytes() for v in model.state_dict().values())


def test_next_token_is_the_language_model_loss():
    model = build_model(LM, seed=0)
    tokens = torch.randint(0, 12, (4, 8))
    assert torch.equal(
        NextToken().loss(model, {"tokens": tokens}), model(tokens, return_type="loss")
    )


def test_the_default_objective_and_a_token_mapping_train_bit_for_bit_alike():
    tokens = np.random.default_rng(0).integers(0, 12, size=(32, 8), dtype=np.int32)
    held_out = np.random.default_rng(1).integers(0, 12, size=(8, 8), dtype=np.int32)
    cfg = TrainingConfig(steps=12, batch_size=8, lr=1e-2, log_every=3, eval_every=6)
    runs = []
    for data, validation, objective in [
        (tokens, held_out, None),
        (tokens, held_out, NextToken()),
        ({"tokens": tokens}, {"tokens": held_out}, NextToken()),
    ]:
        model = build_model(LM, seed=0)
        log = train(model, data, cfg, progress=False, validation=validation, objective=objective)
        runs.append((state_bytes(model), log.to_csv()))
    assert runs[0] == runs[1] == runs[2]


def test_padding_is_masked_out_of_a_bidirectional_model():
    model = build_model(BRACKETS, seed=0)
    data = bracket_data(16)
    tokens = torch.from_numpy(data["tokens"])
    padded = tokens == PAD
    noisy = torch.where(padded, torch.randint(0, 5, tokens.shape), tokens)
    objective = ClassifyAtPosition(position=0, n_classes=2, pad_token=PAD)
    clean = objective.class_logits(model, {"tokens": tokens})
    masked = objective.class_logits(model, {"tokens": noisy, "attention_mask": ~padded})
    torch.testing.assert_close(masked, clean, atol=1e-6, rtol=0)
    for row in range(4):  # and each sequence reads as if it had no padding at all
        alone = tokens[row, ~padded[row]][None]
        torch.testing.assert_close(clean[row], model(alone)[0, 0], atol=1e-6, rtol=1e-5)
    # the test can fail: TransformerLens's attention_mask alone leaves bidirectional keys unmasked
    unhooked = model(noisy, attention_mask=(~padded).long())[:, 0]
    assert (unhooked - clean).abs().max() > 1e-3
    assert not any(point.fwd_hooks for point in model.hook_dict.values()), "a hook was left"


def test_a_padded_bidirectional_classifier_learns_a_rule_read_at_position_zero():
    model = build_model(BRACKETS, seed=0)
    objective = ClassifyAtPosition(pad_token=PAD)
    cfg = TrainingConfig(
        steps=150, batch_size=32, lr=1e-2, log_every=50, eval_every=150, eval_sequences=256
    )
    held_out = bracket_data(256, seed=1)
    log = train(
        model, bracket_data(512), cfg, progress=False, validation=held_out, objective=objective
    )
    batch = {name: torch.from_numpy(a) for name, a in held_out.items()}
    with torch.no_grad():
        accuracy = (objective.class_logits(model, batch).argmax(-1) == batch["labels"]).float()
    assert accuracy.mean().item() > 0.9
    assert log["val_loss"].iloc[-1] == pytest.approx(
        validation_loss(model, batch, 32, objective), rel=1e-6
    )


def soft_target_batch(n=5, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 12, size=(n, 8))
    targets = rng.random((n, 8, 12)) < 0.3
    targets[:, -1] = False  # the game's end: nothing to predict
    targets[0, 2] = False
    return {"tokens": torch.from_numpy(tokens), "targets": torch.from_numpy(targets)}


def reference_soft_target_terms(model, batch):
    logits = model(batch["tokens"])
    losses = []
    for s in range(logits.shape[0]):
        for p in range(logits.shape[1]):
            target = batch["targets"][s, p].float()
            if target.sum() > 0:
                losses.append(F.cross_entropy(logits[s, p], target / target.sum()))
    return torch.stack(losses)


def test_soft_target_loss_matches_a_per_position_loop_and_skips_empty_targets():
    model = build_model(LM, seed=0)
    batch = soft_target_batch()
    objective = SoftTargetNextMove()
    reference = reference_soft_target_terms(model, batch)
    torch.testing.assert_close(objective.loss(model, batch), reference.mean())
    total, weight = objective.loss_terms(model, batch)
    assert weight == len(reference) == int(batch["targets"].any(-1).sum())
    assert total == pytest.approx(reference.sum().item(), rel=1e-6)
    # the last position has no target: what the model predicts there does not count
    changed = dict(batch, tokens=batch["tokens"].clone())
    changed["tokens"][:, -1] = (changed["tokens"][:, -1] + 1) % 12
    assert torch.equal(objective.loss(model, changed), objective.loss(model, batch))
    # validation weighs every scored position the same, across batches of unequal counts
    both = soft_target_batch(n=7, seed=1)
    expected = reference_soft_target_terms(model, both).mean().item()
    assert validation_loss(model, both, 3, objective) == pytest.approx(expected, rel=1e-6)


def test_soft_targets_train_towards_the_uniform_floor():
    """Legal moves after token t are t+1 and t+2: the best loss is log 2."""
    tokens = np.random.default_rng(0).integers(0, 12, size=(256, 8))
    targets = np.zeros((256, 8, 12), dtype=bool)
    rows, cols = np.indices(tokens.shape)
    targets[rows, cols, (tokens + 1) % 12] = True
    targets[rows, cols, (tokens + 2) % 12] = True
    cfg = TrainingConfig(steps=100, batch_size=32, lr=2e-2, log_every=50, eval_every=100)
    data = {"tokens": tokens, "targets": targets}
    log = train(
        build_model(LM, seed=0),
        data,
        cfg,
        progress=False,
        validation=data,
        objective=SoftTargetNextMove(),
    )
    assert log["val_loss"].iloc[-1] < np.log(2) + 0.05


def test_resuming_needs_the_same_objective_and_arrays(tmp_path):
    data = bracket_data(64)
    cfg = TrainingConfig(steps=12, batch_size=8, lr=1e-2, log_every=2, checkpoints=(4, 8))
    objective = ClassifyAtPosition(pad_token=PAD)

    def die_at_8(step, model):
        if step == 8:
            raise KeyboardInterrupt

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(
            build_model(BRACKETS, seed=0), data, cfg, die_at_8, False, killed, objective=objective
        )

    def resumed_rows(data, objective):
        """How many log rows the rerun starts from (0: it started afresh)."""
        resume_dir = tmp_path / f"rerun{len(list(tmp_path.iterdir()))}"
        shutil.copytree(killed, resume_dir)
        first = []
        train(
            build_model(BRACKETS, seed=0),
            data,
            cfg,
            progress=False,
            resume_dir=resume_dir,
            objective=objective,
            on_log=lambda rows: first.append(len(rows)),
        )
        return first[0]

    flipped = dict(data, labels=1 - data["labels"])
    assert resumed_rows(data, objective) == 2  # steps 2 and 4
    assert resumed_rows(flipped, objective) == 0
    assert resumed_rows(data, ClassifyAtPosition(pad_token=None)) == 0
    assert resumed_rows(dict(data, attention_mask=data["tokens"] != PAD), objective) == 0
    # next-token prediction on tokens alone: the identity resume states always had
    model = build_model(LM, seed=0)
    tokens = torch.randint(0, 12, (4, 8))
    plain = run_identity(model, tokens, cfg)
    assert plain == run_identity(model, {"tokens": tokens}, cfg, NextToken())
    assert plain != run_identity(model, tokens, cfg, SoftTargetNextMove())


def test_arrays_an_objective_cannot_read_are_refused():
    model = build_model(BRACKETS, seed=0)
    cfg = TrainingConfig(steps=1, batch_size=4)
    data = bracket_data(8)
    objective = ClassifyAtPosition(pad_token=PAD)
    with pytest.raises(ValueError, match=r"needs the arrays \['labels'\]"):
        train(model, {"tokens": data["tokens"]}, cfg, progress=False, objective=objective)
    with pytest.raises(ValueError, match="share their first axis"):
        train(
            model, dict(data, labels=data["labels"][:5]), cfg, progress=False, objective=objective
        )
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        train(
            model, dict(data, labels=data["labels"] + 1), cfg, progress=False, objective=objective
        )
    with pytest.raises(ValueError, match="position 1, which is padding"):
        train(
            model,
            data,
            cfg,
            progress=False,
            objective=ClassifyAtPosition(position=1, pad_token=OPEN),
        )
    with pytest.raises(ValueError, match="targets must be"):
        train(
            build_model(LM, seed=0),
            {
                "tokens": np.zeros((4, 8), dtype=np.int64),
                "targets": np.zeros((4, 8, 5), dtype=bool),
            },
            cfg,
            progress=False,
            objective=SoftTargetNextMove(),
        )


def test_masked_logits_without_a_mask_are_the_plain_forward():
    model = build_model(BRACKETS, seed=0)
    tokens = torch.from_numpy(bracket_data(4)["tokens"])
    assert torch.equal(masked_logits(model, tokens, None), model(tokens))
