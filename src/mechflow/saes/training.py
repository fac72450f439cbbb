"""Train an SAE on activations streamed from a store (or a tensor), resumably, in bounded memory.

Data order: each epoch visits the source's chunks in a seeded random order; consecutive chunks
are gathered into groups of at least ``shuffle_buffer_tokens`` tokens, every group is shuffled
token by token, and batches are cut from the concatenation of all groups (a partial batch at
the end of a group continues into the next). So every token is seen once per epoch, each batch
mixes several randomly chosen chunks, and batch ``s`` is a pure function of (seed, s): a
resumed run needs only the step to find its place. A background thread reads and shuffles the
next group while the current one trains (at most three groups are in memory).

All randomness is derived from the seed and the step (initialisation, data order, resampling),
so a checkpoint (SAE, Adam state, step, dead-latent counters, input scale, log rows; written
atomically) is enough for a resumed run to equal an uninterrupted one bit for bit.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from mechflow.artifacts import atomic_path, config_hash
from mechflow.models.checkpoints import load_resume_state
from mechflow.progress import Progress
from mechflow.saes import build_sae
from mechflow.saes.config import SAEConfig

if TYPE_CHECKING:
    from mechflow.saes.base import SparseAutoencoder
    from mechflow.store.reader import ActivationStore

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
LOG_COLUMNS = [
    "step", "tokens", "lr", "sparsity_coefficient", "loss", "mse", "fvu", "sparsity_loss",
    "aux_loss", "l0", "dead_fraction", "resampled",
]  # fmt: skip
# Tokens used to estimate the input scale and the initial decoder bias.
_ESTIMATE_TOKENS = 65_536


# --- sources -----------------------------------------------------------------------------------
class ActivationSource(Protocol):
    """Where training tokens come from: fixed chunks, each read whole as ``(tokens, d_in)``."""

    d_in: int
    n_chunks: int

    def chunk_tokens(self, index: int) -> int: ...

    def read_chunk(self, index: int) -> Float[torch.Tensor, "tokens d_in"]: ...

    def identity(self) -> dict[str, Any]: ...


class StoreSource:
    """One hook of an activation store; tokens are (seq, pos) flattened, BOS optionally dropped.

    Chunks are the store's zarr chunks (whole-chunk reads). Trailing axes after ``pos`` are
    flattened into d_in (``hook_z``: heads concatenated, as SAELens does).
    """

    def __init__(self, store: ActivationStore, hook: str, *, skip_bos: bool = True):
        self.store, self.hook, self.skip_bos = store, hook, skip_bos
        self.array = store.array(hook)  # KeyError naming the available hooks
        dims = store.dims(hook)
        if len(dims) < 3 or dims[:2] != ("seq", "pos"):
            raise ValueError(
                f"{store.path}: hook {hook!r} has axes {dims}; an SAE needs (seq, pos, ...) "
                "activations (attention patterns and scores are not per-token vectors)"
            )
        n_seq, n_pos = self.array.shape[:2]
        self.d_in = int(np.prod(self.array.shape[2:]))
        self.rows_per_chunk = int(self.array.chunks[0])
        self.n_seq = int(n_seq)
        self.tokens_per_row = int(n_pos) - (1 if skip_bos else 0)
        if self.tokens_per_row < 1:
            raise ValueError(f"{store.path}: sequences of {n_pos} position(s) leave no tokens")
        self.n_chunks = -(-self.n_seq // self.rows_per_chunk)
        self.n_tokens = self.n_seq * self.tokens_per_row

    def _rows(self, index: int) -> tuple[int, int]:
        start = index * self.rows_per_chunk
        return start, min(start + self.rows_per_chunk, self.n_seq)

    def chunk_tokens(self, index: int) -> int:
        start, stop = self._rows(index)
        return (stop - start) * self.tokens_per_row

    def read_chunk(self, index: int) -> Float[torch.Tensor, "tokens d_in"]:
        start, stop = self._rows(index)
        block = self.array[start:stop]  # seq pos ...
        if self.skip_bos:
            block = block[:, 1:]
        flat = np.ascontiguousarray(block).reshape(-1, self.d_in)
        return torch.from_numpy(flat).to(torch.float32)

    def identity(self) -> dict[str, Any]:
        prov = self.store.provenance
        return {
            "kind": "store",
            "config_hash": prov.get("config_hash"),
            "model_hash": prov.get("model_hash"),
            "dataset_sha256": prov.get("dataset_sha256"),
            "hook": self.hook,
            "skip_bos": self.skip_bos,
            "n_tokens": self.n_tokens,
        }


class TensorSource:
    """In-memory activations (e.g. a toy model's), cut into fixed chunks like a store's."""

    def __init__(self, acts: Float[torch.Tensor, "... d_in"], *, chunk_tokens: int = 65_536):
        if acts.ndim < 2:
            raise ValueError(f"activations must be (..., d_in), got shape {tuple(acts.shape)}")
        self.acts = acts.detach().reshape(-1, acts.shape[-1]).to("cpu", torch.float32)
        self.d_in = int(self.acts.shape[1])
        self.n_tokens = int(self.acts.shape[0])
        self.rows = max(1, int(chunk_tokens))
        self.n_chunks = -(-self.n_tokens // self.rows)

    def chunk_tokens(self, index: int) -> int:
        return min(self.rows, self.n_tokens - index * self.rows)

    def read_chunk(self, index: int) -> Float[torch.Tensor, "tokens d_in"]:
        return self.acts[index * self.rows : (index + 1) * self.rows]

    def identity(self) -> dict[str, Any]:
        # A cheap fingerprint: shape plus a strided sample of values.
        sample = self.acts.flatten()[:: max(1, self.acts.numel() // 4096)]
        return {
            "kind": "tensor",
            "shape": list(self.acts.shape),
            "sample_sum": float(sample.double().sum()),
            "sample_abs": float(sample.double().abs().sum()),
        }


# --- the shuffled token stream ---------------------------------------------------------------
@dataclass(frozen=True)
class _Group:
    epoch: int
    index: int
    chunks: tuple[int, ...]
    start: int  # first token of the group in the whole stream
    size: int


def _epoch_groups(source: ActivationSource, seed: int, epoch: int, buffer_tokens: int):
    order = np.random.default_rng([seed, epoch]).permutation(source.n_chunks)
    group: list[int] = []
    size = 0
    for chunk in order.tolist():
        group.append(chunk)
        size += source.chunk_tokens(chunk)
        if size >= buffer_tokens:
            yield group, size
            group, size = [], 0
    if group:
        yield group, size


def _groups_from(
    source: ActivationSource, seed: int, buffer_tokens: int, start_token: int
) -> Iterator[_Group]:
    """Groups of the endless stream, from the one holding ``start_token`` (no I/O)."""
    epoch_tokens = sum(source.chunk_tokens(i) for i in range(source.n_chunks))
    epoch, offset = divmod(start_token, epoch_tokens)
    base = epoch * epoch_tokens
    while True:
        pos = base
        for index, (chunks, size) in enumerate(_epoch_groups(source, seed, epoch, buffer_tokens)):
            if pos + size > base + offset:
                yield _Group(epoch, index, tuple(chunks), pos, size)
                offset = 0  # later groups are yielded whole
            pos += size
        epoch += 1
        base += epoch_tokens
        offset = 0


def _load_group(source: ActivationSource, group: _Group, seed: int, pin: bool) -> torch.Tensor:
    data = torch.cat([source.read_chunk(c) for c in group.chunks])  # tokens d_in
    perm = np.random.default_rng([seed, group.epoch, group.index, 1]).permutation(len(data))
    data = data.index_select(0, torch.from_numpy(perm))
    return data.pin_memory() if pin else data


class ShuffledBatches:
    """Endless ``(batch_size, d_in)`` float32 batches from ``start_token`` on (see module doc)."""

    def __init__(
        self,
        source: ActivationSource,
        batch_size: int,
        *,
        seed: int,
        buffer_tokens: int,
        start_token: int = 0,
        prefetch: bool = True,
        pin_memory: bool = False,
    ):
        if source.n_chunks < 1:
            raise ValueError("the activation source holds no tokens")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.buffer_tokens, self.start_token = buffer_tokens, start_token
        self.prefetch, self.pin_memory = prefetch, pin_memory
        self.max_group_tokens = 0  # largest group held, for the bounded-memory test

    def _loaded(self) -> Iterator[tuple[_Group, torch.Tensor]]:
        groups = _groups_from(self.source, self.seed, self.buffer_tokens, self.start_token)
        if not self.prefetch:
            for group in groups:
                yield group, _load_group(self.source, group, self.seed, self.pin_memory)
            return
        yield from _Prefetcher(self.source, groups, self.seed, self.pin_memory)

    def __iter__(self) -> Iterator[Float[torch.Tensor, "batch d_in"]]:
        B = self.batch_size
        pending: torch.Tensor | None = None
        skip = self.start_token
        for group, data in self._loaded():
            self.max_group_tokens = max(self.max_group_tokens, len(data))
            if skip > group.start:  # resuming inside this group
                data = data[skip - group.start :]
            skip = 0
            pos = 0
            if pending is not None:
                need = B - len(pending)
                if len(data) < need:
                    pending = torch.cat([pending, data])
                    continue
                yield torch.cat([pending, data[:need]])
                pending, pos = None, need
            while pos + B <= len(data):
                yield data[pos : pos + B]
                pos += B
            if pos < len(data):
                pending = data[pos:].clone()


class _Prefetcher:
    """Reads and shuffles the next group on a thread (zarr decoding and the gather release the
    GIL), one group ahead; errors are re-raised in the consumer."""

    def __init__(self, source, groups: Iterator[_Group], seed: int, pin: bool):
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._args = (source, groups, seed, pin)
        self._thread = threading.Thread(target=self._run, name="sae-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        source, groups, seed, pin = self._args
        try:
            for group in groups:
                item = (group, _load_group(source, group, seed, pin))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._queue.put(err)

    def __iter__(self):
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Stop and join: a daemon thread still inside a torch op when the interpreter exits
            # aborts the process ("terminate called without an active exception").
            self._stop.set()
            self._thread.join(timeout=60)


# --- schedules ---------------------------------------------------------------------------------
def lr_at(cfg: SAEConfig, step: int) -> float:
    """Linear warm-up, constant, linear decay to 0 over the final ``lr_decay_fraction``."""
    total = cfg.total_steps
    warm = int(cfg.lr_warmup_fraction * total)
    decay = int(cfg.lr_decay_fraction * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if decay and step >= total - decay:
        return cfg.lr * (total - step) / decay
    return cfg.lr


def sparsity_coefficient_at(cfg: SAEConfig, step: int) -> float:
    if cfg.l1_coefficient is None:
        return 0.0
    warm = int(cfg.sparsity_warmup_fraction * cfg.total_steps)
    return cfg.l1_coefficient * (min(1.0, (step + 1) / warm) if warm else 1.0)


# --- training ----------------------------------------------------------------------------------
@dataclass
class TrainResult:
    sae: SparseAutoencoder  # on CPU, eval mode, input scale folded in
    log: pd.DataFrame
    input_scale: float
    steps: int
    tokens: int
    dead_fraction: float
    resumed_from: int  # step the run resumed at (0: fresh)
    # dead_fraction: latents that did not fire in the last ``dead_after_tokens`` tokens


def estimate_input_scale(sample: Float[torch.Tensor, "tokens d_in"]) -> float:
    """The factor that makes E||x|| = sqrt(d_in) on ``sample``."""
    mean_norm = float(sample.double().norm(dim=1).mean())
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise FloatingPointError(f"activations have mean norm {mean_norm}; cannot normalise them")
    return math.sqrt(sample.shape[1]) / mean_norm


def _make_optimizer(sae: SparseAutoencoder, cfg: SAEConfig) -> torch.optim.Adam:
    # The fused kernel updates all parameters in one pass (CPU and CUDA).
    return torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas, fused=True)


def train_sae(
    cfg: SAEConfig,
    source: ActivationSource,
    *,
    device: torch.device | str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    prefetch: bool = True,
    on_step: Callable[[int], None] | None = None,
    on_log: Callable[[list[dict[str, float]]], None] | None = None,
    desc: str | None = None,
) -> TrainResult:
    """Train an SAE of ``cfg`` on ``source``; resume from ``checkpoint`` when it matches.

    Raises FloatingPointError when the loss stops being finite (no checkpoint is written past
    that point). ``on_step(step)`` runs after each step (tests use it to simulate a kill).
    Each log row is handed to ``on_log`` as it is logged (a resumed run's earlier rows first,
    in one call). Progress is labelled ``desc`` (default: the architecture).
    """
    device = torch.device(device)
    if source.d_in != cfg.d_in:
        raise ValueError(f"sae.d_in is {cfg.d_in} but the activations have width {source.d_in}")
    identity = config_hash({"sae": cfg.to_dict(), "source": source.identity()})
    sae = build_sae(cfg).to(device)
    optimizer = _make_optimizer(sae, cfg)
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
    rows: list[dict[str, float]] = []
    start = 0
    scale = None
    state = load_resume_state(
        checkpoint, identity=identity, format=CHECKPOINT_FORMAT, map_location=device
    )
    if state is not None:
        sae.load_state_dict(state["sae"])
        optimizer.load_state_dict(state["optimizer"])
        since_fired.copy_(state["tokens_since_fired"])
        rows = list(state["log"])
        start, scale = int(state["step"]), float(state["input_scale"])
        log.info("resuming from %s at step %d of %d", checkpoint, start, cfg.total_steps)
    if on_log is not None:
        on_log(list(rows))

    B, total = cfg.batch_size, cfg.total_steps
    stream = iter(
        ShuffledBatches(
            source,
            B,
            seed=cfg.seed,
            buffer_tokens=cfg.shuffle_buffer_tokens,
            start_token=start * B,
            prefetch=prefetch,
            pin_memory=device.type == "cuda",
        )
    )
    try:
        return _train_steps(
            cfg, sae, optimizer, stream, start, total, scale, device, since_fired, rows,
            checkpoint, identity, progress, on_step, on_log, desc or f"SAE {cfg.architecture}",
        )  # fmt: skip
    finally:
        stream.close()  # stops the prefetch thread before the caller (or the process) moves on


def _train_steps(
    cfg, sae, optimizer, stream, start, total, scale, device, since_fired, rows,
    checkpoint, identity, progress, on_step, on_log, desc,
) -> TrainResult:  # fmt: skip
    B = cfg.batch_size
    unit = cfg.decoder_norm == "unit"
    method = cfg.dead_latent_method
    resample_every = max(1, cfg.resample_every_resolved // B)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    dead_mask = since_fired >= cfg.dead_after_tokens
    resampled = 0
    batches: Iterator[torch.Tensor] = stream
    if scale is None:  # a fresh run: estimate from its own first batches, then train on them
        head = [next(batches) for _ in range(max(1, min(_ESTIMATE_TOKENS // B, total)))]
        sample = torch.cat(head)
        scale = estimate_input_scale(sample) if cfg.normalize_activations != "none" else 1.0
        sae.init_b_dec_((sample * scale).to(device))
        del sample
        batches = itertools.chain(head, batches)
    bar = Progress(
        range(start, total),
        total=total,
        initial=start,
        desc=desc,
        rate_unit="tokens",
        rate_scale=B,
        enabled=progress,
        logger=log,
    )
    sae.train()
    for step in bar:
        x = next(batches).to(device, non_blocking=True)
        if scale != 1.0:
            x = x * scale
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        coeff = sparsity_coefficient_at(cfg, step)
        out = sae.training_loss(
            x, sparsity_coefficient=coeff, dead_mask=dead_mask if method == "auxk" else None
        )
        nonfinite |= ~torch.isfinite(out.loss.detach())
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if unit:
            sae.remove_parallel_decoder_grad_()
        optimizer.step()
        sae.post_step_(unit)
        since_fired.add_(B).masked_fill_(out.fired, 0)
        dead_mask = since_fired >= cfg.dead_after_tokens
        done = step + 1
        if method == "resample" and done % resample_every == 0 and done <= total // 2:
            _raise_if_nonfinite(nonfinite, done)
            from mechflow.saes.relu import resample_dead_latents_

            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + done)
            resampled += resample_dead_latents_(sae, x, dead_mask, optimizer, gen)
            since_fired.masked_fill_(dead_mask, 0)
            dead_mask = since_fired >= cfg.dead_after_tokens
        if done % cfg.log_every == 0 or done == total:
            _raise_if_nonfinite(nonfinite, done)
            rows.append(_log_row(cfg, step, x, out, coeff, optimizer, dead_mask, resampled))
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4g}", l0=f"{rows[-1]['l0']:.1f}")
            if on_log is not None:
                on_log(rows[-1:])
        if checkpoint is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            if done < total:
                _raise_if_nonfinite(nonfinite, done)
                _write_checkpoint(
                    checkpoint, identity, done, B, scale, sae, optimizer, since_fired, rows
                )
        if on_step is not None:
            on_step(done)
        del out
    _raise_if_nonfinite(nonfinite, total)
    sae.eval()
    sae = sae.to("cpu")
    if scale != 1.0:
        sae.fold_input_scale_(scale)
    dead_fraction = float((since_fired >= cfg.dead_after_tokens).float().mean())
    return TrainResult(
        sae=sae,
        log=pd.DataFrame(rows, columns=LOG_COLUMNS),
        input_scale=scale,
        steps=total,
        tokens=total * B,
        dead_fraction=dead_fraction,
        resumed_from=start,
    )


def _raise_if_nonfinite(flag: torch.Tensor, step: int) -> None:
    if bool(flag):
        raise FloatingPointError(
            f"SAE training diverged: the loss was NaN or infinite at or before step {step} "
            "(lower lr or the sparsity coefficient)"
        )


@torch.no_grad()
def _log_row(cfg, step, x, out, coeff, optimizer, dead_mask, resampled) -> dict[str, float]:
    centred = (x - x.mean(0)).pow(2).sum() / x.shape[0]
    mse = float(out.parts["mse"])
    return {
        "step": step + 1,
        "tokens": (step + 1) * cfg.batch_size,
        "lr": optimizer.param_groups[0]["lr"],
        "sparsity_coefficient": coeff,
        "loss": float(out.loss),
        "mse": mse,
        "fvu": mse / max(float(centred), 1e-12),
        "sparsity_loss": float(out.parts.get("sparsity_loss", float("nan"))),
        "aux_loss": float(out.parts.get("aux_loss", float("nan"))),
        "l0": float((out.feature_acts != 0).sum()) / x.shape[0],
        "dead_fraction": float(dead_mask.float().mean()),
        "resampled": resampled,
    }


def _write_checkpoint(
    path, identity, step, batch_size, scale, sae, optimizer, since_fired, rows
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "identity": identity,
        "step": step,
        "data_position": step * batch_size,  # tokens of the shuffled stream consumed
        "input_scale": scale,
        "sae": {k: v.detach().cpu() for k, v in sae.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "tokens_since_fired": since_fired.cpu(),
        "log": rows,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    log.info("checkpoint at step %d: %s", step, path)
