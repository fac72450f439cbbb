"""Train a HookedTransformer on a token dataset with next-token loss (AdamW, warm-up)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from mechflow.models.config import TrainingConfig

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)


def batch_indices(n_sequences: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """Row indices for every step: reshuffled epochs, so each sequence is seen once per epoch."""
    rng = np.random.default_rng(seed)
    needed = steps * batch_size
    epochs = -(-needed // n_sequences)
    order = np.concatenate([rng.permutation(n_sequences) for _ in range(epochs)])
    return order[:needed].reshape(steps, batch_size)


def train(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "seq pos"],
    cfg: TrainingConfig,
    on_checkpoint: Callable[[int, HookedTransformer], None] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train in place; call ``on_checkpoint(step, model)`` at each configured step.

    Step 0 is the initialisation. Returns the loss log (long format: step, loss, lr).
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (seq, pos), got shape {tokens.shape}")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"sequences of length {tokens.shape[1]} exceed n_ctx={model.cfg.n_ctx}")
    if int(tokens.max()) >= model.cfg.d_vocab:
        raise ValueError(f"token id {int(tokens.max())} >= d_vocab={model.cfg.d_vocab}")
    device = next(model.parameters()).device
    data = torch.from_numpy(np.array(tokens, dtype=np.int64))  # seq pos; copied off the mmap
    order = batch_indices(len(data), cfg.batch_size, cfg.steps, cfg.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas
    )
    warmup = max(cfg.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    checkpoints = set(cfg.checkpoints)
    rows = []
    model.train()
    if 0 in checkpoints and on_checkpoint is not None:
        on_checkpoint(0, model)
    # disable=None: tqdm hides itself when stderr is not a TTY (Snakemake logs stay clean)
    bar = tqdm(
        range(1, cfg.steps + 1), desc="train", disable=None if progress else True, mininterval=2
    )
    for step in bar:
        batch = data[order[step - 1]].to(device)  # batch pos
        loss = model(batch, return_type="loss")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged: loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            rows.append({"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}")
        if step in checkpoints and on_checkpoint is not None:
            on_checkpoint(step, model)
    model.eval()
    return pd.DataFrame(rows, columns=["step", "loss", "lr"])
