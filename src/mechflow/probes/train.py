"""Train every (hook, target) probe of a sweep at once: one batched optimisation.

All probes see the same minibatches (:mod:`mechflow.probes.rows`: data order, memory bound,
standardisation) and take one step together (:mod:`mechflow.probes.model`). Early stopping
is per probe: after every epoch each probe's validation loss is compared with its best (the
prior-only model, all-zero weights and log class frequencies as bias, is epoch 0); a probe
keeps the weights of its best epoch and stops after ``patience`` epochs without a relative
improvement of ``tolerance``. Training ends when every probe has stopped, or at
``max_epochs``. Stopped probes keep receiving updates (they are columns of a shared matrix),
but their kept weights no longer change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mechflow.probes.config import ProbeConfig
from mechflow.probes.linear import Probes, unpacked
from mechflow.probes.model import BatchedProbes
from mechflow.probes.rows import RowBuffers
from mechflow.probes.sources import ProbeSource, as_source
from mechflow.probes.split import split_by_group
from mechflow.progress import Progress

log = logging.getLogger(__name__)

TABLE_COLUMNS = [
    "hook", "target", "train_accuracy", "validation_accuracy", "baseline_accuracy",
    "best_validation_loss", "best_epoch", "epochs", "n_train", "n_validation",
]  # fmt: skip


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """Probes and how they did.

    ``table``: one row per (hook, target): accuracies with the kept weights, the validation
    accuracy of always answering the training split's majority class, the best validation loss
    and its epoch, epochs trained, labelled rows. ``history``: one row per (epoch, hook,
    target): validation loss and whether the probe was still training. ``validation``: the
    held-out rows. ``max_buffer_rows``: most rows of one buffer read from the source (the
    validation rows, when kept, are held beside it).
    """

    probes: Probes
    table: pd.DataFrame
    history: pd.DataFrame
    validation: np.ndarray
    max_buffer_rows: int


def train_probes(
    acts: ProbeSource | np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    config: ProbeConfig,
    *,
    groups: np.ndarray | torch.Tensor | None = None,
    hook_names: Sequence[str] | None = None,
    target_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ProbeResult:
    """Train a probe for every (hook, target) of ``acts`` ``(hooks, rows, d_model)`` and
    ``labels`` ``(rows, targets)``.

    ``acts`` is an array or tensor (trained on its device unless ``device`` says otherwise)
    or a source such as :class:`~mechflow.probes.sources.StoreSource` (streamed, on
    ``device``, default CPU). ``groups`` (one id per row, e.g. the game) decides the split:
    validation rows are whole groups; default the source's (a store: one group per sequence;
    an array: one per row). Labels equal to ``config.ignore_index`` are masked out.
    """
    started = time.perf_counter()
    source = as_source(acts, hook_names)
    dev = torch.device(device) if device is not None else source.device
    labels = _checked_labels(labels, source.n_rows, config)
    n_targets, C = labels.shape[1], config.n_classes
    groups = source.default_groups() if groups is None else _checked_groups(groups, source.n_rows)
    validation = split_by_group(groups, config.validation_fraction, config.seed)
    names = {
        "target_names": _names(target_names, n_targets, "target_names", "target_"),
        "class_names": _names(class_names, C, "class_names", ""),
    }
    rows = RowBuffers(source, validation, config, dev)
    y = torch.from_numpy(labels.astype(_label_dtype(config))).to(dev)  # row target
    train_counts = _class_counts(labels[~validation], config)  # target class
    val_counts = _class_counts(labels[validation], config)
    model = BatchedProbes(len(source.hook_names), source.d_model, train_counts, config, dev)

    H, T = len(source.hook_names), n_targets
    best_loss = torch.full((H, T), float("inf"), device=dev)
    best_epoch = torch.zeros((H, T), dtype=torch.long, device=dev)
    epochs = torch.zeros((H, T), dtype=torch.long, device=dev)
    active = torch.ones((H, T), dtype=torch.bool, device=dev)
    val_correct = torch.zeros((H, T), dtype=torch.long, device=dev)  # at the best epoch
    history: list[tuple[np.ndarray, np.ndarray]] = []
    bar = Progress(
        total=config.max_epochs, desc="train probes", unit="epoch", enabled=progress, logger=log
    )
    with bar:
        for epoch in range(config.max_epochs + 1):
            if epoch:
                rows.train_epoch(model, y, epoch)
            loss, correct = rows.evaluate(model, y, which="validation")
            was_active = active.clone()
            limit = best_loss - config.tolerance * best_loss.abs()
            # the first finite loss always improves; NaN (no validation labels) never does
            better = active & (loss < torch.where(best_loss.isinf(), best_loss, limit))
            model.keep_best(better)
            best_loss = torch.where(better, loss, best_loss)
            best_epoch = torch.where(better, epoch, best_epoch)
            val_correct = torch.where(better, correct, val_correct)
            active &= epoch - best_epoch < config.patience
            epochs = torch.where(was_active, epoch, epochs)
            history.append((loss.cpu().numpy(), was_active.cpu().numpy()))
            if epoch:
                bar.update()
                bar.set_postfix(training=int(active.sum()), val_loss=float(loss.nanmean()))
            if not active.any():
                break

    model.restore_best()
    _, train_correct = rows.evaluate(model, y, which="train")
    weight, bias = unpacked(model.w.detach(), model.b.detach(), C)
    probes = Probes(
        weight=weight,
        bias=bias,
        mean=rows.mean,
        std=rows.std,
        hook_names=tuple(source.hook_names),
        **names,
        config=config,
        source=source.identity(),
    )
    n_train, n_val = train_counts.sum(1), val_counts.sum(1)  # target
    majority = train_counts.argmax(1)
    table = pd.DataFrame(
        {
            "hook": np.repeat(source.hook_names, T),
            "target": np.tile(names["target_names"], H),
            "train_accuracy": _ratio(train_correct, n_train),
            "validation_accuracy": _ratio(val_correct, n_val),
            "baseline_accuracy": np.tile(_ratio(val_counts[np.arange(T), majority], n_val), H),
            "best_validation_loss": best_loss.cpu().numpy().ravel(),
            "best_epoch": best_epoch.cpu().numpy().ravel(),
            "epochs": epochs.cpu().numpy().ravel(),
            "n_train": np.tile(n_train, H),
            "n_validation": np.tile(n_val, H),
        },
        columns=TABLE_COLUMNS,
    )
    log.info(
        "trained %d probes (%d hooks x %d targets) in %d epochs, %.1fs",
        H * T, H, T, len(history) - 1, time.perf_counter() - started,
    )  # fmt: skip
    return ProbeResult(
        probes=probes,
        table=table,
        history=_history(history, source.hook_names, names["target_names"]),
        validation=validation,
        max_buffer_rows=rows.max_rows,
    )


def _checked_labels(labels, n_rows: int, cfg: ProbeConfig) -> np.ndarray:
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(
            f"labels: expected (rows, targets), got shape {arr.shape} (for a store, rows are "
            "(seq, pos) flattened: reshape(-1, n_targets))"
        )
    if arr.shape[0] != n_rows:
        raise ValueError(
            f"labels have {arr.shape[0]} rows but acts have {n_rows}: labels are (rows, "
            "targets), acts (hooks, rows, d_model)"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels: expected integer class ids, got dtype {arr.dtype}")
    bad = (arr != cfg.ignore_index) & ((arr < 0) | (arr >= cfg.n_classes))
    if bad.any():
        r, t = np.argwhere(bad)[0]
        raise ValueError(
            f"labels: {arr[r, t]} (row {r}, target {t}) is neither a class 0..{cfg.n_classes - 1} "
            f"nor ignore_index {cfg.ignore_index}"
        )
    return arr


def _checked_groups(groups, n_rows: int) -> np.ndarray:
    arr = groups.detach().cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
    if arr.ndim != 1 or len(arr) != n_rows:
        raise ValueError(
            f"groups: expected one id per row of acts ({n_rows}), got shape {arr.shape}"
        )
    return arr


def _label_dtype(cfg: ProbeConfig):
    fits = cfg.n_classes <= np.iinfo(np.int16).max and cfg.ignore_index >= np.iinfo(np.int16).min
    return np.int16 if fits else np.int64


def _class_counts(labels: np.ndarray, cfg: ProbeConfig) -> np.ndarray:
    """``(targets, classes)`` label counts, ignored labels left out."""
    return np.stack([(labels == c).sum(0) for c in range(cfg.n_classes)], axis=1)


def _names(names: Sequence[str] | None, n: int, what: str, prefix: str) -> tuple[str, ...]:
    if names is None:
        return tuple(f"{prefix}{i}" for i in range(n))
    names = tuple(str(name) for name in names)
    if len(names) != n or len(set(names)) != n:
        raise ValueError(f"{what}: expected {n} distinct names, got {len(names)}: {names[:8]}")
    return names


def _ratio(numerator, denominator: np.ndarray) -> np.ndarray:
    num = numerator.cpu().numpy() if isinstance(numerator, torch.Tensor) else numerator
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / np.where(denominator > 0, denominator, np.nan)).ravel()


def _history(history, hook_names, target_names) -> pd.DataFrame:
    H, T = len(hook_names), len(target_names)
    loss = np.stack([h[0] for h in history])  # epoch hook target
    active = np.stack([h[1] for h in history])
    return pd.DataFrame(
        {
            "epoch": np.repeat(np.arange(len(history)), H * T),
            "hook": np.tile(np.repeat(hook_names, T), len(history)),
            "target": np.tile(target_names, H * len(history)),
            "validation_loss": loss.ravel(),
            "training": active.ravel(),
        }
    )
