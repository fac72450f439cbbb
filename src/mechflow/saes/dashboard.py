"""Latent dashboards: what makes a few SAE latents fire and what they write to the logits.

For an SAE trained on one hook of a HookedTransformer, from that hook's activation store:

- ``latent_statistics``: one streamed pass over the store giving every latent's firing count and
  the range of its nonzero activations; ``select_latents`` picks latents to show from it.
- ``latent_activations``: a second streamed pass for the chosen latents only: their top-k
  activating tokens (ties go to the earlier token) and a histogram of their nonzero values.
- ``direct_logit_effects``: each latent's decoder row carried to the residual stream (through
  W_O for ``hook_z``/``hook_result``, W_out for ``mlp.hook_post``) and through W_U, ignoring the
  final LayerNorm's scale as SAE dashboards do; its most promoted and suppressed tokens.

With a ``decode`` (a tokenizer's, for a model of text) contexts are text, the activating token
in guillemets and line breaks shown as ``⏎``: ``"    def «__init__»(self"``; tokens of a synthetic
vocabulary (no tokenizer) are written as ids: ``"12 87 [45] 3"``. Both tables also carry each
token's own ``text``. Memory stays bounded by the batch:
only ``(tokens, d_sae)`` activations of one batch and ``(n_latents, top_k)`` buffers are held.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from mechflow.progress import Progress
from mechflow.saes.base import SparseAutoencoder

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from mechflow.store.reader import ActivationStore

log = logging.getLogger(__name__)

CONTEXT_COLUMNS = ["latent", "rank", "seq", "pos", "activation", "token", "text", "context"]
HISTOGRAM_COLUMNS = ["latent", "bin_left", "bin_right", "count", "frequency"]
LOGIT_COLUMNS = ["latent", "sign", "rank", "token", "text", "value"]
Decode = Callable[[Sequence[int]], str]  # token ids -> text (a tokenizer's decode)
VISIBLE = str.maketrans({"\n": "⏎", "\t": "⇥", "\r": "␍"})  # whitespace a context must show

# Hooks whose activation is added to the residual stream as is (d_in == d_model).
_RESIDUAL_HOOK = re.compile(
    r"^(hook_embed|hook_pos_embed|blocks\.\d+\.(hook_resid_(pre|mid|post)|hook_attn_out"
    r"|hook_mlp_out))$"
)
_Z_HOOK = re.compile(r"^blocks\.(\d+)\.attn\.hook_(z|result)$")
_MLP_HOOK = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")


@dataclass(frozen=True)
class LatentStatistics:
    """Per latent over every token of the store: how often it fires and its nonzero range."""

    n_tokens: int
    fires: np.ndarray  # d_sae, int64
    max_activation: np.ndarray  # d_sae, float32 (0 where dead)
    min_nonzero: np.ndarray  # d_sae, float32 (inf where dead)

    @property
    def frequency(self) -> np.ndarray:
        return self.fires / max(self.n_tokens, 1)


def _token_batches(
    store: ActivationStore, hook: str, *, skip_bos: bool, batch_size: int, desc: str
) -> Iterator[tuple[int, Float[torch.Tensor, "tokens d_in"]]]:
    """``(first sequence, activations)`` of ``batch_size`` consecutive sequences, flattened."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    array = store.array(hook)
    n_seq = int(array.shape[0])
    d_in = int(np.prod(array.shape[2:]))
    with Progress(total=n_seq, desc=desc, unit="sequence", logger=log) as bar:
        for start in range(0, n_seq, batch_size):
            block = array[start : min(start + batch_size, n_seq)]  # seq pos ...
            if skip_bos:
                block = block[:, 1:]
            flat = np.ascontiguousarray(block).reshape(-1, d_in)  # tokens d_in
            yield start, torch.from_numpy(flat).to(torch.float32)
            bar.update(len(block))


def _n_positions(store: ActivationStore, hook: str, skip_bos: bool) -> tuple[int, int]:
    """(positions per stored sequence, positions per sequence the SAE sees)."""
    n_pos = int(store.array(hook).shape[1])
    per_seq = n_pos - (1 if skip_bos else 0)
    if per_seq < 1:
        raise ValueError(f"{store.path}: sequences of {n_pos} position(s) leave no tokens")
    return n_pos, per_seq


@torch.no_grad()
def latent_statistics(
    sae: SparseAutoencoder,
    store: ActivationStore,
    hook: str,
    *,
    skip_bos: bool = True,
    batch_size: int = 64,
) -> LatentStatistics:
    """Firing counts and nonzero ranges of every latent, streamed over the store."""
    device = sae.W_dec.device
    fires = torch.zeros(sae.d_sae, dtype=torch.int64, device=device)
    high = torch.zeros(sae.d_sae, device=device)
    low = torch.full((sae.d_sae,), float("inf"), device=device)
    n = 0
    batches = _token_batches(
        store, hook, skip_bos=skip_bos, batch_size=batch_size, desc="latent statistics"
    )
    for _, x in batches:
        acts = sae.encode(x.to(device))  # tokens d_sae
        active = acts != 0
        n += acts.shape[0]
        fires += active.sum(0)
        high = torch.maximum(high, acts.max(0).values)
        low = torch.minimum(low, acts.masked_fill(~active, float("inf")).min(0).values)
    if n == 0:
        raise ValueError(f"{store.path}: no tokens of {hook} to summarise")
    return LatentStatistics(
        n_tokens=n,
        fires=fires.cpu().numpy(),
        max_activation=high.cpu().numpy(),
        min_nonzero=low.cpu().numpy(),
    )


def select_latents(
    stats: LatentStatistics, n_latents: int, *, max_frequency: float = 0.5
) -> list[int]:
    """The most frequently firing live latents among those firing on < ``max_frequency`` of tokens.

    Dense latents (often a bias direction) say little on a dashboard; when too few latents are
    sparse enough the densest are added last. Ties go to the lower index: deterministic.
    """
    if n_latents < 1:
        raise ValueError(f"n_latents must be >= 1, got {n_latents}")
    freq = stats.frequency
    live = np.flatnonzero(stats.fires > 0)
    # stable sort on -frequency: equal frequencies keep index order
    order = live[np.argsort(-freq[live], kind="stable")]
    sparse = [int(i) for i in order if freq[i] < max_frequency]
    dense = [int(i) for i in order if freq[i] >= max_frequency]
    chosen = (sparse + dense[::-1])[:n_latents]  # dense ones least dense first
    if len(chosen) < n_latents:
        log.warning("only %d live latent(s) of %d; showing those", len(live), len(freq))
    return chosen


def token_text(token: int, decode: Decode | None) -> str:
    """One token as a person reads it: its text, line breaks and tabs made visible (its id
    without a tokenizer)."""
    return decode([int(token)]).translate(VISIBLE) if decode is not None else str(int(token))


def format_context(
    tokens: Sequence[int], pos: int, before: int, after: int, decode: Decode | None = None
) -> str:
    """Up to ``before`` tokens before ``pos`` and ``after`` after it: text with the activating
    token in guillemets (``"self.«_name» ="``) with a ``decode``, else ids (``"12 87 [45] 3"``)."""
    lo, hi = max(0, pos - before), min(len(tokens), pos + after + 1)
    if decode is None:
        parts = [f"[{tokens[i]}]" if i == pos else str(tokens[i]) for i in range(lo, hi)]
        return " ".join(parts)
    shown = [token_text(tokens[i], decode) for i in range(lo, hi)]
    shown[pos - lo] = f"«{shown[pos - lo]}»"
    return "".join(shown)


@torch.no_grad()
def latent_activations(
    sae: SparseAutoencoder,
    store: ActivationStore,
    hook: str,
    latents: Sequence[int],
    stats: LatentStatistics,
    *,
    skip_bos: bool = True,
    top_k: int = 8,
    context: int = 6,
    after: int = 2,
    bins: int = 30,
    batch_size: int = 64,
    decode: Decode | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-activating contexts and histograms of nonzero activations of ``latents``.

    Histogram bins span each latent's nonzero range from ``stats`` (so counts add up to its
    firing count); a dead latent gets one empty bin at 0.
    """
    if top_k < 1 or bins < 1 or context < 0 or after < 0:
        raise ValueError(
            f"need top_k >= 1, bins >= 1, context >= 0, after >= 0; "
            f"got {top_k}, {bins}, {context}, {after}"
        )
    latents = [int(i) for i in latents]
    bad = [i for i in latents if not 0 <= i < sae.d_sae]
    if bad:
        raise ValueError(f"latent(s) {bad} out of range for d_sae={sae.d_sae}")
    n_lat = len(latents)
    device = sae.W_dec.device
    n_pos, per_seq = _n_positions(store, hook, skip_bos)
    first = 1 if skip_bos else 0
    index = torch.tensor(latents, device=device)

    edges = []
    for i in latents:
        lo, hi = float(stats.min_nonzero[i]), float(stats.max_activation[i])
        edges.append(np.linspace(lo, hi, bins + 1) if stats.fires[i] > 0 and hi > lo else None)
    counts = np.zeros((n_lat, bins), dtype=np.int64)
    best_vals = torch.full((n_lat, top_k), float("-inf"), device=device)
    best_idx = torch.full((n_lat, top_k), -1, dtype=torch.int64, device=device)
    batches = _token_batches(
        store, hook, skip_bos=skip_bos, batch_size=batch_size, desc="top activations"
    )
    for start, x in batches:
        acts = sae.encode(x.to(device))[:, index].t().contiguous()  # n_lat tokens
        n_tok = acts.shape[1]
        flat = torch.arange(n_tok, device=device)
        seq = start + flat // per_seq
        token_id = seq * n_pos + first + flat % per_seq  # index into the (seq, pos) grid
        vals = torch.cat([best_vals, acts], dim=1)
        idx = torch.cat([best_idx, token_id.expand(n_lat, -1)], dim=1)
        # stable: among equal activations the earlier token (already kept, or lower index) wins
        order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :top_k]
        best_vals, best_idx = vals.gather(1, order), idx.gather(1, order)
        values = acts.cpu().numpy()
        for row in range(n_lat):
            nonzero = values[row][values[row] != 0]
            if nonzero.size == 0:
                continue
            if edges[row] is None:  # one distinct value: everything in one bin
                counts[row, 0] += nonzero.size
            else:
                clipped = np.clip(nonzero.astype(np.float64), edges[row][0], edges[row][-1])
                counts[row] += np.histogram(clipped, bins=edges[row])[0]

    best_vals, best_idx = best_vals.cpu().numpy(), best_idx.cpu().numpy()
    keep = (best_idx >= 0) & (best_vals > 0)
    seqs = np.unique(best_idx[keep] // n_pos)
    tokens = store.tokens(seqs) if seqs.size else np.zeros((0, n_pos), dtype=np.int64)
    row_of = {int(s): r for r, s in enumerate(seqs)}
    context_rows = []
    for row, i in enumerate(latents):
        for rank in range(top_k):
            if not keep[row, rank]:
                continue
            seq, pos = divmod(int(best_idx[row, rank]), n_pos)
            ids = [int(t) for t in tokens[row_of[seq]]]
            context_rows.append(
                (i, rank, seq, pos, float(best_vals[row, rank]), ids[pos],
                 token_text(ids[pos], decode), format_context(ids, pos, context, after, decode))
            )  # fmt: skip
    contexts = pd.DataFrame(context_rows, columns=CONTEXT_COLUMNS)

    hist_rows = []
    freq = stats.frequency
    for row, i in enumerate(latents):
        if stats.fires[i] == 0:
            hist_rows.append((i, 0.0, 0.0, 0, 0.0))
            continue
        lo, hi = float(stats.min_nonzero[i]), float(stats.max_activation[i])
        bounds = edges[row] if edges[row] is not None else np.array([lo, hi])
        for b in range(len(bounds) - 1):
            hist_rows.append((i, float(bounds[b]), float(bounds[b + 1]), int(counts[row, b]),
                              float(freq[i])))  # fmt: skip
    histograms = pd.DataFrame(hist_rows, columns=HISTOGRAM_COLUMNS)
    return contexts, histograms


def residual_directions(
    model: HookedTransformer, hook: str, W_dec: Float[torch.Tensor, "d_sae d_in"]
) -> Float[torch.Tensor, "d_sae d_model"]:
    """What each decoder row adds to the residual stream, for the hooks that write to it."""
    W_dec = W_dec.to(model.W_U.device, model.W_U.dtype)
    d_model = model.cfg.d_model
    if _RESIDUAL_HOOK.match(hook):
        if W_dec.shape[1] != d_model:
            raise ValueError(f"{hook}: SAE d_in {W_dec.shape[1]} != d_model {d_model}")
        return W_dec
    if m := _Z_HOOK.match(hook):
        W_O = model.blocks[int(m.group(1))].attn.W_O  # head_index d_head d_model
        n_heads = W_O.shape[0]
        if m.group(2) == "z":  # concatenated heads, then each head's W_O
            rows = W_dec.reshape(W_dec.shape[0], n_heads, W_O.shape[1])
            return torch.einsum("shd,hdm->sm", rows, W_O)
        rows = W_dec.reshape(W_dec.shape[0], n_heads, d_model)  # hook_result: sum over heads
        return rows.sum(1)
    if m := _MLP_HOOK.match(hook):
        return W_dec @ model.blocks[int(m.group(1))].mlp.W_out  # d_sae d_model
    raise ValueError(
        f"{hook}: no direct path to the logits known for this hook (supported: residual stream, "
        "attn_out/mlp_out, attn.hook_z/hook_result, mlp.hook_post)"
    )


@torch.no_grad()
def logit_effects(
    model: HookedTransformer, hook: str, W_dec: Float[torch.Tensor, "d_sae d_in"]
) -> Float[torch.Tensor, "d_sae d_vocab_out"]:
    """Direct effect of one unit of each latent on the logits (final LayerNorm scale ignored)."""
    return residual_directions(model, hook, W_dec) @ model.W_U


@torch.no_grad()
def direct_logit_effects(
    model: HookedTransformer,
    hook: str,
    sae: SparseAutoencoder,
    latents: Sequence[int],
    *,
    n_logits: int = 8,
    decode: Decode | None = None,
) -> pd.DataFrame:
    """The ``n_logits`` most promoted (sign positive) and suppressed (negative) output tokens."""
    if n_logits < 1:
        raise ValueError(f"n_logits must be >= 1, got {n_logits}")
    latents = [int(i) for i in latents]
    effects = logit_effects(model, hook, sae.W_dec[latents].detach()).cpu()  # n_lat d_vocab_out
    k = min(n_logits, effects.shape[1])
    rows = []
    for row, i in enumerate(latents):
        values = effects[row]
        for sign, order in (
            ("positive", torch.sort(values, descending=True, stable=True).indices),
            ("negative", torch.sort(values, descending=False, stable=True).indices),
        ):
            for rank, token in enumerate(order[:k].tolist()):
                text = token_text(token, decode)
                rows.append((i, sign, rank, int(token), text, float(values[token])))
    return pd.DataFrame(rows, columns=LOGIT_COLUMNS)


@dataclass(frozen=True)
class LatentSummary:
    latents: list[int]
    stats: LatentStatistics
    contexts: pd.DataFrame  # CONTEXT_COLUMNS
    histograms: pd.DataFrame  # HISTOGRAM_COLUMNS
    logits: pd.DataFrame  # LOGIT_COLUMNS


def summarize_latents(
    sae: SparseAutoencoder,
    store: ActivationStore,
    hook: str,
    model: HookedTransformer,
    *,
    latents: Sequence[int] | None = None,
    n_latents: int = 4,
    max_frequency: float = 0.5,
    skip_bos: bool = True,
    top_k: int = 8,
    context: int = 6,
    after: int = 2,
    bins: int = 30,
    n_logits: int = 8,
    batch_size: int = 64,
    decode: Decode | None = None,
) -> LatentSummary:
    """The three dashboard tables for ``latents`` (default: :func:`select_latents`); tokens are
    shown as text with ``decode``."""
    stats = latent_statistics(sae, store, hook, skip_bos=skip_bos, batch_size=batch_size)
    chosen = (
        [int(i) for i in latents]
        if latents is not None
        else select_latents(stats, n_latents, max_frequency=max_frequency)
    )
    if not chosen:
        raise ValueError(f"{hook}: every latent is dead on {store.path}; nothing to summarise")
    contexts, histograms = latent_activations(
        sae, store, hook, chosen, stats, skip_bos=skip_bos, top_k=top_k, context=context,
        after=after, bins=bins, batch_size=batch_size, decode=decode,
    )  # fmt: skip
    logits = direct_logit_effects(model, hook, sae, chosen, n_logits=n_logits, decode=decode)
    return LatentSummary(chosen, stats, contexts, histograms, logits)
