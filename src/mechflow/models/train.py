"""Train a HookedTransformer on a token dataset (AdamW, warm-up, then a constant or cosine
learning rate; optional gradient clipping and validation loss). The loss is an objective
(``mechflow.models.objectives``): next-token prediction unless told otherwise, or one reading
arrays aligned with the tokens (labels, targets, an attention mask).

A run given a resume directory can be killed and rerun: after each checkpoint it saves what the
loop carries (weights, AdamW and schedule state, step, loss-log rows, RNG state; written
atomically), and the rerun continues from there to the same bytes as an uninterrupted run. The
batch order is a function of the seed, so the step alone finds the data's place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int

from mechflow.artifacts import atomic_path, config_hash
from mechflow.data.tokens import spread_indices
from mechflow.models.checkpoints import load_resume_state
from mechflow.models.config import TrainingConfig
from mechflow.models.objectives import NextToken, Objective
from mechflow.progress import Progress

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)

RESUME_STATE = "state.pt"
RESUME_FORMAT = 1
LOG_COLUMNS = ["step", "loss", "lr"]
VALIDATION_COLUMN = "val_loss"  # in the log only when a validation set is given

# Training data: a token array (seq, pos), or arrays sharing their first axis, one of them tokens.
TrainingData = Int[np.ndarray, "seq pos"] | Mapping[str, np.ndarray]


def log_columns(validation: bool) -> list[str]:
    return [*LOG_COLUMNS, VALIDATION_COLUMN] if validation else list(LOG_COLUMNS)


def lr_factor(cfg: TrainingConfig, index: int) -> float:
    """The learning rate of optimiser step ``index + 1`` over ``cfg.lr``: linear warm-up, then
    constant or a cosine down to ``min_lr_fraction`` at the last step."""
    step = index + 1
    warmup = max(cfg.warmup_steps, 1)
    if cfg.lr_schedule == "constant" or step <= cfg.warmup_steps:
        return min(1.0, step / warmup)
    done = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    floor = cfg.min_lr_fraction
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done))


@torch.inference_mode()
def validation_loss(
    model: HookedTransformer,
    data: Int[torch.Tensor, "seq pos"] | Mapping[str, torch.Tensor],
    batch_size: int,
    objective: Objective | None = None,
) -> float:
    """Mean loss over ``data`` (tokens, or aligned tensors), weighed as ``objective`` says
    (next-token loss by default: every sequence weighs the same)."""
    objective = NextToken() if objective is None else objective
    data = data if isinstance(data, Mapping) else {"tokens": data}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, weight = 0.0, 0
    for start in range(0, len(data["tokens"]), batch_size):
        batch = {name: array[start : start + batch_size].to(device) for name, array in data.items()}
        batch_total, batch_weight = objective.loss_terms(model, batch)
        total += batch_total
        weight += batch_weight
    model.train(was_training)
    return total / weight if weight else math.nan


def thread_invariant_length(n_pos: int) -> bool:
    """Whether training on sequences of ``n_pos`` tokens gives the same bits on 1 and N threads.

    ATen's CPU softmax backward (the attention pattern's) rounds the last partial SIMD vector of
    each row differently on its serial (1 thread) and parallel paths, so rows of a length with
    such a tail differ in the last bits: more than 16 and not a multiple of 16 on AVX-512, more
    than 8 and not a multiple of 8 on AVX2 (measured with torch 2.13). Deterministic mode does
    not cover it; each path is deterministic by itself, so a fixed thread count still is.
    """
    return n_pos <= 8 or n_pos % 16 == 0


def batch_indices(n_sequences: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """Row indices for every step: reshuffled epochs, so each sequence is seen once per epoch."""
    rng = np.random.default_rng(seed)
    needed = steps * batch_size
    epochs = -(-needed // n_sequences)
    order = np.concatenate([rng.permutation(n_sequences) for _ in range(epochs)])
    return order[:needed].reshape(steps, batch_size)


def _arrays(
    model: HookedTransformer, data: TrainingData, objective: Objective, what: str = ""
) -> dict[str, np.ndarray]:
    """``data`` as named arrays, checked against the model and the objective (``what``: a
    prefix naming them in errors, e.g. ``"validation "``)."""
    arrays = dict(data) if isinstance(data, Mapping) else {"tokens": data}
    if "tokens" not in arrays:
        raise ValueError(f"{what}arrays need tokens, got {sorted(arrays)}")
    tokens = arrays["tokens"]
    if tokens.ndim != 2:
        raise ValueError(f"{what}tokens must be (seq, pos), got shape {tokens.shape}")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(
            f"{what}sequences of length {tokens.shape[1]} exceed n_ctx={model.cfg.n_ctx}"
        )
    if int(tokens.max()) >= model.cfg.d_vocab:
        raise ValueError(f"{what}token id {int(tokens.max())} >= d_vocab={model.cfg.d_vocab}")
    unaligned = {name: len(a) for name, a in arrays.items() if len(a) != len(tokens)}
    if unaligned:
        raise ValueError(
            f"{what}arrays must share their first axis: {len(tokens)} token sequences, "
            f"lengths {unaligned}"
        )
    objective.check(arrays, model)
    return arrays


def _tensors(arrays: Mapping[str, np.ndarray], rows: slice | np.ndarray = slice(None)) -> dict:
    """Torch copies (off any mmap); tokens as int64, the rest in their own dtype."""
    return {
        name: torch.from_numpy(np.array(a[rows], dtype=np.int64 if name == "tokens" else None))
        for name, a in arrays.items()
    }


def train(
    model: HookedTransformer,
    tokens: TrainingData,
    cfg: TrainingConfig,
    on_checkpoint: Callable[[int, HookedTransformer], None] | None = None,
    progress: bool = True,
    resume_dir: str | os.PathLike | None = None,
    on_log: Callable[[list[dict[str, Any]]], None] | None = None,
    desc: str = "train",
    validation: TrainingData | None = None,
    objective: Objective | None = None,
) -> pd.DataFrame:
    """Train in place on ``objective`` (default: next-token prediction); call
    ``on_checkpoint(step, model)`` at each configured step.

    ``tokens`` is a token array (seq, pos) or a mapping of arrays sharing their first axis,
    ``tokens`` among them, with what the objective reads (e.g. ``labels``, ``targets``,
    ``attention_mask``); each step's batch takes the same rows of every array. ``validation``
    likewise.

    Step 0 is the initialisation. Returns the loss log (long format: step, loss, lr); each row
    is handed to ``on_log`` as it is logged (a resumed run's earlier rows first, in one call).
    Progress (``desc``: its label) is reported unless ``progress`` is False. With
    ``validation`` and ``cfg.eval_every``, the log gains ``val_loss`` (the objective's, on the
    ``cfg.eval_sequences`` validation sequences spread evenly over them) every ``eval_every``
    steps and at the end.

    With ``resume_dir``, the loop's state is saved there after each checkpoint but the last
    (once ``on_checkpoint`` has returned), and a call whose config, initial weights, objective,
    arrays and device match the saved state's continues from it. Anything else in the directory
    belongs to that run as well (``on_checkpoint`` may keep its files there): a call that does
    not match empties it and starts afresh. The caller removes it once its outputs are written.
    """
    objective = NextToken() if objective is None else objective
    arrays = _arrays(model, tokens, objective)
    tokens = arrays["tokens"]
    device = next(model.parameters()).device
    if device.type == "cpu" and not thread_invariant_length(tokens.shape[1]):
        log.warning(
            "sequences of %d tokens: on CPU a run on 1 thread and one on several differ in the "
            "last bits (lengths <= 8 or multiples of 16 do not; see thread_invariant_length)",
            tokens.shape[1],
        )
    data = _tensors(arrays)  # tokens: seq pos
    order = batch_indices(len(tokens), cfg.batch_size, cfg.steps, cfg.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    held_out = None
    if validation is not None and cfg.eval_every is not None:
        held_out = _arrays(model, validation, objective, "validation ")
        # rows from every part of the split, not its first files only
        rows = spread_indices(len(held_out["tokens"]), cfg.eval_sequences)
        held_out = _tensors(held_out, rows)
    checkpoints = set(cfg.checkpoints)
    rows: list[dict[str, Any]] = []
    start = 0
    identity = None
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        identity = run_identity(model, data, cfg, objective)
        state = load_resume_state(
            resume_dir / RESUME_STATE, identity=identity, format=RESUME_FORMAT
        )
        if state is None:
            shutil.rmtree(resume_dir, ignore_errors=True)
            resume_dir.mkdir(parents=True)
        else:
            model.load_state_dict(state["model"], strict=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            rows, start = list(state["log"]), int(state["step"])
            log.info("resuming from %s at step %d of %d", resume_dir, start, cfg.steps)
    if on_log is not None:
        on_log(list(rows))
    model.train()
    if start == 0 and 0 in checkpoints and on_checkpoint is not None:
        on_checkpoint(0, model)
    bar = Progress(
        range(start + 1, cfg.steps + 1),
        total=cfg.steps,
        initial=start,
        desc=desc,
        rate_unit="tokens",
        rate_scale=cfg.batch_size * tokens.shape[1],
        enabled=progress,
        logger=log,
    )
    for step in bar:
        batch = {name: array[order[step - 1]].to(device) for name, array in data.items()}
        loss = objective.loss(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged: loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            rows.append({"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]})
            if held_out is not None:
                evaluate = step % cfg.eval_every == 0 or step == cfg.steps
                rows[-1][VALIDATION_COLUMN] = (
                    validation_loss(model, held_out, cfg.batch_size, objective)
                    if evaluate
                    else math.nan
                )
            shown = {"loss": f"{rows[-1]['loss']:.3f}"}
            if not math.isnan(rows[-1].get(VALIDATION_COLUMN, math.nan)):
                shown["val_loss"] = f"{rows[-1][VALIDATION_COLUMN]:.3f}"
            bar.set_postfix(**shown)
            if on_log is not None:
                on_log(rows[-1:])
        if step in checkpoints:
            if on_checkpoint is not None:
                on_checkpoint(step, model)
            if resume_dir is not None and step < cfg.steps:
                _write_resume_state(resume_dir, identity, step, model, optimizer, scheduler, rows)
    model.eval()
    return pd.DataFrame(rows, columns=log_columns(held_out is not None))


def run_identity(
    model: HookedTransformer,
    data: Int[torch.Tensor, "seq pos"] | Mapping[str, torch.Tensor],
    cfg: TrainingConfig,
    objective: Objective | None = None,
) -> str:
    """What a saved state must match to be resumed: config, model, initial weights, objective,
    tokens and every other array. (Next-token prediction on tokens alone hashes exactly as
    before objectives existed, so runs killed then still resume.)"""
    objective = NextToken() if objective is None else objective
    data = data if isinstance(data, Mapping) else {"tokens": data}
    weights = hashlib.sha256()
    for name, value in model.state_dict().items():
        weights.update(name.encode())
        weights.update(value.detach().cpu().contiguous().numpy().tobytes())
    fields = {
        "format": RESUME_FORMAT,
        "training": dataclasses.asdict(cfg),
        "model": model.cfg.to_dict(),
        "device": next(model.parameters()).device.type,
        "initial_weights": weights.hexdigest(),
        "tokens": hashlib.sha256(data["tokens"].numpy().tobytes()).hexdigest(),
    }
    if objective != NextToken():
        fields["objective"] = objective.identity()
    others = sorted(set(data) - {"tokens"})
    if others:
        fields["arrays"] = {
            name: {
                "dtype": str(data[name].dtype),
                "shape": list(data[name].shape),
                "sha256": hashlib.sha256(data[name].contiguous().numpy().tobytes()).hexdigest(),
            }
            for name in others
        }
    return config_hash(fields)


def _write_resume_state(resume_dir, identity, step, model, optimizer, scheduler, rows) -> None:
    device = next(model.parameters()).device
    state = {
        "format": RESUME_FORMAT,
        "identity": identity,
        "step": step,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "log": rows,
    }
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    with atomic_path(Path(resume_dir) / RESUME_STATE) as tmp:
        torch.save(state, tmp)
    log.debug("resume state at step %d in %s", step, resume_dir)
