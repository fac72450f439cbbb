"""The rows probes train on: standardised float32 buffers in a seeded order, in bounded memory.

Data order: each epoch visits the source's chunks in a seeded random order, gathers
consecutive chunks until ``shuffle_buffer_rows`` rows, sorts them back into row order and
shuffles the buffer's training rows with a seeded permutation (of ``(seed, epoch, buffer)``).
A source of at most ``shuffle_buffer_rows`` rows is one buffer, read once and kept, and its
batches do not depend on how it is chunked: an array and a store of the same rows train the
same probes.

Memory, streaming: the activations held at once are one buffer (``shuffle_buffer_rows`` plus
at most one chunk, read by whole chunks) and, when they fit in ``shuffle_buffer_rows`` rows,
the validation rows (gathered in the first pass, so later epochs read the source once): at
most ``2 x (shuffle_buffer_rows + chunk rows) x hooks x d_model x 4`` bytes. Otherwise every
epoch reads the source twice (training, then validation). Beside them: the labels (``rows x
targets``, int16), the weights (five copies of ``hooks x targets x d_model x classes``
floats: weights, best, gradient, two Adam moments) and one batch's logits. In memory, the
buffer is a standardised copy of the array (the array itself is never modified).

Standardisation: per hook and feature, the training rows' mean and std (one pass before
training), so one learning rate suits every layer whatever its residual norm, and weight
decay weighs every feature alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mechflow.probes.config import ProbeConfig
from mechflow.probes.model import BatchedProbes
from mechflow.probes.sources import ProbeSource

EVAL_ROWS = 4096  # rows per evaluation product (no gradients)
MOMENT_ROWS = 2048  # rows per block of the mean/std pass


class RowBuffers:
    """The source's rows as standardised float32 buffers on the device, in seeded order."""

    def __init__(self, source: ProbeSource, validation: np.ndarray, cfg: ProbeConfig, device):
        self.source, self.validation, self.cfg, self.device = source, validation, cfg, device
        self.chunks = source.chunks()
        self.max_rows = 0
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.cached: tuple[np.ndarray, torch.Tensor] | None = None
        self.val_cached: tuple[np.ndarray, torch.Tensor] | None = None
        H, D = len(source.hook_names), source.d_model
        if source.n_rows <= cfg.shuffle_buffer_rows:
            self.cached = self._load(range(len(self.chunks)))
        moments = Moments(H, D, device) if cfg.standardize else None
        val_rows = np.flatnonzero(validation)
        keep_val = self.cached is None and len(val_rows) <= cfg.shuffle_buffer_rows
        if keep_val:  # filled in row order by the pass below
            self.val_cached = (val_rows, torch.empty(H, len(val_rows), D, device=device))
        if moments is not None or keep_val:
            at = 0
            for rows, x in self._buffers(None):
                if moments is not None:
                    moments.update(x, _positions(~validation[rows], device), source.hook_names)
                if keep_val:
                    pos = _positions(validation[rows], device)
                    self.val_cached[1][:, at : at + len(pos)] = x.index_select(1, pos)
                    at += len(pos)
        if moments is not None:
            self.mean, self.std = moments.result()
            for kept in (self.cached, self.val_cached):
                if kept is not None:
                    kept[1].sub_(self.mean[:, None]).div_(self.std[:, None])
        else:
            self.mean = torch.zeros(H, D, device=device)
            self.std = torch.ones(H, D, device=device)

    def train_epoch(self, model: BatchedProbes, y: torch.Tensor, epoch: int) -> None:
        seed, batch = self.cfg.seed, self.cfg.batch_size
        for k, (rows, x) in enumerate(self._buffers(epoch)):
            pos = np.flatnonzero(~self.validation[rows])
            pos = pos[np.random.default_rng([seed, epoch, k]).permutation(len(pos))]
            for s in range(0, len(pos), batch):
                p = torch.from_numpy(pos[s : s + batch]).to(self.device)
                r = torch.from_numpy(rows[pos[s : s + batch]]).to(self.device)
                model.step(x.index_select(1, p), y.index_select(0, r))

    def evaluate(self, model: BatchedProbes, y: torch.Tensor, *, which: str):
        """Mean loss and correct counts ``(hook, target)`` on the train or validation rows."""
        want_val = which == "validation"
        buffers = self._buffers(None)
        if want_val and self.val_cached is not None:
            buffers = iter([self.val_cached])
        loss = correct = count = 0
        with torch.no_grad():
            for rows, x in buffers:
                pos = np.flatnonzero(self.validation[rows] == want_val)
                for s in range(0, len(pos), EVAL_ROWS):
                    p = torch.from_numpy(pos[s : s + EVAL_ROWS]).to(self.device)
                    yb = y.index_select(
                        0, torch.from_numpy(rows[pos[s : s + EVAL_ROWS]]).to(self.device)
                    )
                    batch_loss, batch_correct = model.evaluate(x.index_select(1, p), yb)
                    loss, correct = loss + batch_loss, correct + batch_correct
                    count = count + (yb != self.cfg.ignore_index).sum(0)
        if isinstance(loss, int):  # no such rows
            H, T = len(self.source.hook_names), y.shape[1]
            nan = torch.full((H, T), float("nan"), device=self.device)
            return nan, torch.zeros((H, T), dtype=torch.long, device=self.device)
        mean = torch.where(count > 0, loss / count.clamp_min(1), float("nan"))
        return mean, correct

    def _buffers(self, epoch: int | None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(row ids, x (hook, rows, d_model))`` per buffer; seeded chunk order for ``epoch``."""
        if self.cached is not None:
            yield self.cached
            return
        order = np.arange(len(self.chunks))
        if epoch is not None:
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(order)
        group: list[int] = []
        size = 0
        for c in order.tolist():
            group.append(c)
            size += self.chunks[c][1] - self.chunks[c][0]
            if size >= self.cfg.shuffle_buffer_rows:
                yield self._standardized(self._load(sorted(group)))
                group, size = [], 0
        if group:
            yield self._standardized(self._load(sorted(group)))

    def _load(self, chunk_ids) -> tuple[np.ndarray, torch.Tensor]:
        spans = [self.chunks[c] for c in chunk_ids]
        n = sum(stop - start for start, stop in spans)
        H, D = len(self.source.hook_names), self.source.d_model
        x = torch.empty(H, n, D, device=self.device)  # hook row d_model, our own copy
        at = 0
        for start, stop in spans:
            x[:, at : at + stop - start] = self.source.read(start, stop)
            at += stop - start
        self.max_rows = max(self.max_rows, n)
        return np.concatenate([np.arange(a, b) for a, b in spans]), x

    def _standardized(self, loaded):
        rows, x = loaded
        if self.mean is not None and self.cfg.standardize:
            x.sub_(self.mean[:, None]).div_(self.std[:, None])
        return rows, x


class Moments:
    """Per hook and feature mean and std, merged over blocks in float64 (Chan et al.)."""

    def __init__(self, n_hooks: int, d_model: int, device):
        self.n = 0
        self.mean = torch.zeros(n_hooks, d_model, dtype=torch.float64, device=device)
        self.m2 = torch.zeros_like(self.mean)

    def update(self, x: torch.Tensor, pos: torch.Tensor, hook_names: Sequence[str]) -> None:
        for s in range(0, len(pos), MOMENT_ROWS):
            block = x.index_select(1, pos[s : s + MOMENT_ROWS])  # hook row d_model
            k = block.shape[1]
            mean = block.mean(1)
            if not torch.isfinite(mean).all():
                bad = [
                    h
                    for h, ok in zip(hook_names, torch.isfinite(mean).all(1), strict=True)
                    if not ok
                ]
                raise ValueError(f"acts: hook(s) {bad} hold non-finite values (inf or NaN)")
            m2 = (block - mean[:, None]).square_().sum(1).double()
            delta = mean.double() - self.mean
            total = self.n + k
            self.mean += delta * (k / total)
            self.m2 += m2 + delta.square() * (self.n * k / total)
            self.n = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n == 0:
            raise ValueError("no training rows to standardise with")
        std = (self.m2 / self.n).sqrt()
        # a constant feature would be divided by rounding noise: leave it unscaled
        std = torch.where(std > 1e-6 * std.amax(1, keepdim=True), std, 1.0)
        return self.mean.float(), std.float()


def _positions(mask: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.flatnonzero(mask)).to(device)
