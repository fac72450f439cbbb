"""Full-batch training on a last-position classification task (the grokking setting).

The whole training set is one batch, so an epoch is one AdamW step; test loss and accuracy are
logged alongside, since grokking is the gap between the two curves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from mechflow.models.config import FullBatchTrainingConfig
from mechflow.progress import Progress

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)

LOG_COLUMNS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"]


def last_position_logits(
    model: HookedTransformer, inputs: Int[torch.Tensor, "pair pos"]
) -> Float[torch.Tensor, "pair d_vocab_out"]:
    """Logits at the final (``=``) position, where the answer is read."""
    return model(inputs, return_type="logits")[:, -1, :]


def loss_and_accuracy(
    logits: Float[torch.Tensor, "pair d_vocab_out"], labels: Int[torch.Tensor, " pair"]
) -> tuple[torch.Tensor, float]:
    # float64 log-softmax: train loss falls to ~1e-7, below float32 resolution of log(1 - eps)
    loss = F.cross_entropy(logits.double(), labels)
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    return loss, accuracy


def train_full_batch(
    model: HookedTransformer,
    inputs: Int[np.ndarray, "pair pos"],
    labels: Int[np.ndarray, " pair"],
    train_rows: Int[np.ndarray, " train"],
    test_rows: Int[np.ndarray, " test"],
    cfg: FullBatchTrainingConfig,
    on_checkpoint: Callable[[int, HookedTransformer], None] | None = None,
    progress: bool = True,
    on_log: Callable[[list[dict[str, Any]]], None] | None = None,
    desc: str = "train",
) -> pd.DataFrame:
    """Train in place; call ``on_checkpoint(epoch, model)`` at each configured epoch (0 = init).

    Returns the log: one row every ``log_every`` epochs (and the last) with train and test
    loss/accuracy, measured before that epoch's update; each row is handed to ``on_log`` as it
    is logged. Progress (``desc``: its label) counts updates, unless ``progress`` is False.
    """
    if int(inputs.max()) >= model.cfg.d_vocab:
        raise ValueError(f"token id {int(inputs.max())} >= d_vocab={model.cfg.d_vocab}")
    if int(labels.max()) >= model.cfg.d_vocab_out:
        raise ValueError(f"label {int(labels.max())} >= d_vocab_out={model.cfg.d_vocab_out}")
    device = next(model.parameters()).device
    x_train = torch.as_tensor(inputs[train_rows], device=device)  # train pos
    y_train = torch.as_tensor(labels[train_rows], device=device)
    x_test = torch.as_tensor(inputs[test_rows], device=device)  # test pos
    y_test = torch.as_tensor(labels[test_rows], device=device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas
    )
    warmup = max(cfg.warmup_epochs, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: min(1.0, (e + 1) / warmup))
    checkpoints = set(cfg.checkpoints)
    rows = []
    bar = Progress(total=cfg.epochs, desc=desc, unit="epoch", enabled=progress, logger=log)
    for epoch in range(cfg.epochs + 1):
        if epoch in checkpoints and on_checkpoint is not None:
            on_checkpoint(epoch, model)
        model.train()
        loss, train_acc = loss_and_accuracy(last_position_logits(model, x_train), y_train)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged: loss is {loss.item()} at epoch {epoch}")
        if epoch % cfg.log_every == 0 or epoch == cfg.epochs:
            model.eval()
            with torch.no_grad():
                test_loss, test_acc = loss_and_accuracy(last_position_logits(model, x_test), y_test)
            rows.append(
                {
                    "epoch": epoch,
                    "train_loss": loss.item(),
                    "train_accuracy": train_acc,
                    "test_loss": test_loss.item(),
                    "test_accuracy": test_acc,
                    "lr": scheduler.get_last_lr()[0],
                }
            )
            bar.set_postfix(
                train_loss=f"{loss.item():.2e}",
                test_loss=f"{test_loss.item():.2e}",
                test_accuracy=f"{test_acc:.3f}",
            )
            if on_log is not None:
                on_log(rows[-1:])
        if epoch == cfg.epochs:
            break  # the last row describes the final weights; no update after it
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.update()
    bar.close()
    model.eval()
    return pd.DataFrame(rows, columns=LOG_COLUMNS)
