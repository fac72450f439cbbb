"""Generation from language models: greedy, temperature, top-k, top-p and beam search.

Why it exists: samples from a trained model are how one sees what it learnt, and they must be
reproducible (every draw comes from the ``torch.Generator`` passed in) and the same whatever runs
the model. ``generate`` and ``beam_search`` are one loop over a small decoder interface (prefill
the prompt, feed one token, reorder rows for beams) with three implementations: our
``mechflow.models.gpt.GPT`` with its preallocated KV cache, a ``HookedTransformer`` driving
TransformerLens's own ``TransformerLensKeyValueCache``, and recomputing the whole prefix every
step (any model, or ``use_cache=False``, the reference the cached paths are tested against).

Why not ``HookedTransformer.generate``: in TransformerLens 3.9, for a model without a tokenizer
(every model built from a config, ours included), its cached path adds positional embeddings to
the *whole* sequence of embeddings with the cache length as offset (``get_residual(embeds,
pos_offset)`` with no attention mask), so the one new token it keeps gets position
``2 * cache_len`` instead of ``cache_len``: every token after the first is generated with the
wrong position (greedy outputs differ from its uncached path), and once ``2 * cache_len + 1``
passes n_ctx the slice of ``W_pos`` comes up short ("size of tensor a (129) must match the size
of tensor b (128)" at cache length 128 with n_ctx 256). Driving the cache directly, feeding only
the new token with an explicit all-ones ``attention_mask``, matches the uncached logits; that is
what ``_HookedCached`` does.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechflow.models.gpt import GPT


def filter_top_k(logits: Float[Tensor, "batch d_vocab"], k: int) -> Float[Tensor, "batch d_vocab"]:
    """Logits with everything but the k largest of each row set to -inf (exactly k kept)."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1)
    return torch.full_like(logits, -torch.inf).scatter(-1, top.indices, top.values)


def filter_top_p(
    logits: Float[Tensor, "batch d_vocab"], p: float
) -> Float[Tensor, "batch d_vocab"]:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # of the tokens more likely than this one
    drop = (mass_before >= p).scatter(-1, order, mass_before >= p)  # back to vocabulary order
    return logits.masked_fill(drop, -torch.inf)


def sample_next(
    logits: Float[Tensor, "batch d_vocab"],
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """One token per row: argmax at temperature 0, else temperature, then top-k, then top-p
    (top-p renormalises over what top-k kept, as Hugging Face does)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = filter_top_p(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


# ---------------------------------------------------------------------------------------------
# Decoders: what generate and beam_search need from a model.


class Decoder(Protocol):
    def prefill(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch d_vocab"]:
        """Run the prompt; logits of its last position."""

    def step(self, tokens: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_vocab"]:
        """Append one token per row; logits of the new position."""

    def reorder(self, index: Int[Tensor, " new_batch"]) -> None:
        """Keep the rows ``index`` picks (beam search)."""


class _GPTCached:
    def __init__(self, model: GPT, batch: int, capacity: int):
        self.model, self.cache = model, model.new_cache(batch, capacity)

    def prefill(self, tokens):
        return self.model(tokens, self.cache, last_only=True)[:, -1]

    def step(self, tokens):
        return self.model(tokens[:, None], self.cache, last_only=True)[:, -1]

    def reorder(self, index):
        self.cache.reorder(index)


class _HookedCached:
    """TransformerLens's KV cache, fed one new token at a time with an explicit attention mask
    (without one, a model with no tokenizer refuses a cache; see the module docstring)."""

    def __init__(self, model, batch: int, capacity: int):
        from transformer_lens import TransformerLensKeyValueCache

        self.model = model
        self.cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch)

    def _run(self, tokens):
        mask = torch.ones_like(tokens)
        return self.model(tokens, past_kv_cache=self.cache, attention_mask=mask)[:, -1]

    def prefill(self, tokens):
        return self._run(tokens)

    def step(self, tokens):
        return self._run(tokens[:, None])

    def reorder(self, index):
        for entry in self.cache.entries:
            entry.past_keys = entry.past_keys.index_select(0, index)
            entry.past_values = entry.past_values.index_select(0, index)
        mask = self.cache.previous_attention_mask
        self.cache.previous_attention_mask = mask.index_select(0, index.to(mask.device))


class _Recompute:
    """No cache: the whole sequence so far is run every step (the reference)."""

    def __init__(self, forward, batch: int, capacity: int, device: torch.device):
        self.forward = forward
        self.tokens = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.n = 0

    def prefill(self, tokens):
        self.n = tokens.shape[1]
        self.tokens[:, : self.n] = tokens
        return self.forward(self.tokens[:, : self.n])[:, -1]

    def step(self, tokens):
        self.tokens[:, self.n] = tokens
        self.n += 1
        return self.forward(self.tokens[:, : self.n])[:, -1]

    def reorder(self, index):
        self.tokens = self.tokens.index_select(0, index)


def _hooked_transformer_class():
    """HookedTransformer if TransformerLens is already imported (else no model can be one)."""
    tl = sys.modules.get("transformer_lens")
    return None if tl is None else tl.HookedTransformer


def _device(model, tokens: Tensor) -> torch.device:
    """The model's device; a plain callable runs where its tokens are."""
    parameters = getattr(model, "parameters", None)
    return tokens.device if parameters is None else next(parameters()).device


def _n_ctx(model) -> int | None:
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "n_ctx", None)


def decoder(
    model, batch: int, capacity: int, use_cache: bool = True, device: torch.device | str = "cpu"
) -> Decoder:
    """The decoder for ``model``: our GPT, a HookedTransformer, or any ``tokens -> logits``
    callable (recomputed, ``use_cache=False`` only)."""
    hooked = _hooked_transformer_class()
    if isinstance(model, GPT):
        if use_cache:
            return _GPTCached(model, batch, capacity)
        return _Recompute(partial(model, last_only=True), batch, capacity, device)
    if hooked is not None and isinstance(model, hooked):
        if use_cache:
            return _HookedCached(model, batch, capacity)
        return _Recompute(model, batch, capacity, device)
    if use_cache:
        raise TypeError(f"no KV cache for a {type(model).__name__}; pass use_cache=False")
    return _Recompute(model, batch, capacity, device)


def _start(model, tokens: Tensor, max_new_tokens: int) -> tuple[int, int]:
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must be [batch, pos] with pos >= 1, got {tuple(tokens.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt = tokens.shape[1]
    n_ctx = _n_ctx(model)
    if n_ctx is not None and prompt + max_new_tokens > n_ctx:
        raise ValueError(
            f"a prompt of {prompt} tokens + {max_new_tokens} new ones exceeds the model's "
            f"context of n_ctx={n_ctx}"
        )
    return prompt, prompt + max_new_tokens


@torch.inference_mode()
def generate(
    model,
    tokens: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    eos_token_id: int | None = None,
    return_logits: bool = False,
) -> (
    Int[Tensor, "batch total_pos"]
    | tuple[Int[Tensor, "batch total_pos"], Float[Tensor, "batch new_pos d_vocab"]]
):
    """Prompt + ``max_new_tokens`` tokens per row, sampled by ``sample_next``.

    ``temperature=0`` is greedy. After a row samples ``eos_token_id`` the rest of it is that
    token (and generation stops early once every row has). ``return_logits`` also returns the
    model's raw logits at each new position (before temperature and filtering). Every random
    draw comes from ``generator`` (on the model's device), so a seed gives the same samples.
    """
    _check_sampling(temperature, top_k, top_p)
    tokens = tokens.to(_device(model, tokens))
    prompt, total = _start(model, tokens, max_new_tokens)
    batch = tokens.shape[0]
    dec = decoder(model, batch, total, use_cache, tokens.device)
    out = torch.empty(batch, total, dtype=torch.long, device=tokens.device)  # [batch, total_pos]
    out[:, :prompt] = tokens
    steps = []
    done = None if eos_token_id is None else torch.zeros(batch, dtype=torch.bool)
    logits = dec.prefill(tokens)
    for i in range(max_new_tokens):
        if return_logits:
            steps.append(logits)
        nxt = sample_next(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )
        if done is not None:
            nxt = nxt.masked_fill(done.to(nxt.device), eos_token_id)
            done = done | (nxt == eos_token_id).cpu()
        out[:, prompt + i] = nxt
        if done is not None and bool(done.all()):
            out[:, prompt + i + 1 :] = eos_token_id
            break
        if i + 1 < max_new_tokens:
            logits = dec.step(nxt)
    if return_logits:
        return out, torch.stack(steps, dim=1)
    return out


@torch.inference_mode()
def beam_search(
    model,
    tokens: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    *,
    beams: int,
    use_cache: bool = True,
) -> tuple[Int[Tensor, "batch total_pos"], Float[Tensor, " batch"]]:
    """The most likely continuation of each row that a beam of ``beams`` finds, and its
    log-probability (summed over the new tokens). All beams have the same length, so no length
    penalty; with ``beams`` >= d_vocab ** (max_new_tokens - 1) the search is exhaustive."""
    if beams < 1:
        raise ValueError(f"beams must be >= 1, got {beams}")
    tokens = tokens.to(_device(model, tokens))
    prompt, total = _start(model, tokens, max_new_tokens)
    batch, device = tokens.shape[0], tokens.device
    dec = decoder(model, batch, total, use_cache, device)
    logprobs = dec.prefill(tokens).float().log_softmax(dim=-1)  # [batch, d_vocab]
    vocab = logprobs.shape[-1]
    # Every row starts as `beams` copies of itself, of which only the first is alive.
    expand = torch.arange(batch, device=device).repeat_interleave(beams)
    dec.reorder(expand)
    logprobs = logprobs.index_select(0, expand)  # [batch * beams, d_vocab]
    out = torch.empty(batch * beams, total, dtype=torch.long, device=device)
    out[:, :prompt] = tokens.index_select(0, expand)
    scores = torch.full((batch, beams), -torch.inf, device=device)
    scores[:, 0] = 0
    row_base = torch.arange(batch, device=device)[:, None] * beams  # [batch, 1]
    for i in range(max_new_tokens):
        candidates = scores[:, :, None] + logprobs.view(batch, beams, vocab)
        scores, flat = candidates.view(batch, beams * vocab).topk(beams, dim=-1)  # sorted
        rows = (row_base + flat // vocab).view(-1)  # parent beam of each new beam
        new = (flat % vocab).view(-1)
        out = out.index_select(0, rows)
        out[:, prompt + i] = new
        if i + 1 < max_new_tokens:
            dec.reorder(rows)
            logprobs = dec.step(new).float().log_softmax(dim=-1)
    return out.view(batch, beams, total)[:, 0], scores[:, 0]
