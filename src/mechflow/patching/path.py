"""Path patching (Wang et al. 2022): the effect of each sender head on chosen receivers only.

For a sender head, the clean run is repeated with that head's output taken from the corrupted
run and every other head's output frozen at its clean value (MLPs are recomputed, so paths
through them count), and the receivers' inputs are recorded; then the clean run is repeated
with only those receiver inputs replaced, and scored. Receivers are the final residual stream
(the logits: one pass per sender) or heads' query, key or value inputs (two passes).

ARENA's implementation runs those passes once per sender. Here every pass is batched across
senders (tile ``t`` of the batch is sender ``t``) and starts at the earliest layer it changes,
from the clean run's cached ``hook_resid_pre``. A head's q/k/v input is patched through its
``hook_q``/``hook_k``/``hook_v``: they depend on that input alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from mechflow.patching.activation import Metric, _padding_hooks, score_tiles

FINAL = "resid_final"


@dataclass(frozen=True)
class Receiver:
    """A head's query, key or value input (``input``: ``"q"``, ``"k"`` or ``"v"``)."""

    layer: int
    head: int
    input: str

    def __post_init__(self):
        if self.input not in ("q", "k", "v"):
            raise ValueError(f"a receiver's input is 'q', 'k' or 'v', got {self.input!r}")

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.attn.hook_{self.input}"


@torch.inference_mode()
def path_patching(
    model,
    clean_tokens: Int[Tensor, "prompt pos"],
    corrupted_tokens: Int[Tensor, "prompt pos"],
    metric: Metric,
    *,
    receivers: str | Sequence[Receiver] = FINAL,
    senders: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 64,
    attention_mask: Int[Tensor, "prompt pos"] | None = None,
) -> Tensor:
    """The metric of the clean run with each sender's path to ``receivers`` corrupted.

    Args:
        receivers: ``"resid_final"`` (the logits) or :class:`Receiver` head inputs.
        senders: ``(layer, head)`` pairs (default every head). A sender at or after the last
            receiver's layer has no path to it: its entry is the clean run's metric, uncomputed.
        batch_size: sequences per forward pass (prompts x senders at once).

    Returns:
        ``(layer, head)``: the metric per sender (NaN where not a sender).
    """
    cfg = model.cfg
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean and corrupted tokens differ in shape: {tuple(clean_tokens.shape)} vs "
            f"{tuple(corrupted_tokens.shape)}"
        )
    final = isinstance(receivers, str)
    if final and receivers != FINAL:
        raise ValueError(f"receivers: {FINAL!r} or a list of Receiver, got {receivers!r}")
    receivers = [] if final else list(receivers)
    if not final and not receivers:
        raise ValueError("receivers: an empty list")
    for r in receivers:
        if not (0 <= r.layer < cfg.n_layers and 0 <= r.head < cfg.n_heads):
            raise ValueError(f"receiver {r}: no such head in a {cfg.n_layers}x{cfg.n_heads} model")
    senders = (
        [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
        if senders is None
        else [tuple(s) for s in senders]
    )
    for layer, head in senders:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise ValueError(f"sender ({layer}, {head}): no such head")

    device = next(model.parameters()).device
    clean_tokens, corrupted_tokens = clean_tokens.to(device), corrupted_tokens.to(device)
    mask = None if attention_mask is None else attention_mask.to(device)
    z_hooks = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    resid_hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(cfg.n_layers)]
    with model.hooks(fwd_hooks=_padding_hooks(model, mask, 0)):
        clean_logits, clean = model.run_with_cache(
            clean_tokens, names_filter=lambda n: n in z_hooks or n in resid_hooks,
            attention_mask=mask,
        )  # fmt: skip
        _, corrupted = model.run_with_cache(
            corrupted_tokens, names_filter=lambda n: n in z_hooks, attention_mask=mask
        )
    clean_score = float(metric(clean_logits))
    last = cfg.n_layers if final else max(r.layer for r in receivers)
    out = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    active = sorted(s for s in senders if s[0] < last)
    for layer, head in senders:
        if layer >= last:
            out[layer, head] = clean_score
    tiles = max(1, batch_size // len(clean_tokens))
    for first in range(0, len(active), tiles):
        chunk = active[first : first + tiles]
        scores = _senders_pass(model, clean, corrupted, chunk, receivers, metric, mask)
        for (layer, head), score in zip(chunk, scores, strict=True):
            out[layer, head] = score
    return out


def _senders_pass(model, clean, corrupted, chunk, receivers, metric, mask) -> list[float]:
    """Both passes for the senders of ``chunk``, one tile each."""
    n_tiles, n_prompts = len(chunk), len(clean["blocks.0.hook_resid_pre"])
    start = min(layer for layer, _ in chunk)
    tiled_mask = None if mask is None else mask.repeat(n_tiles, 1)

    def tile(x: Tensor) -> Tensor:
        return x.repeat(n_tiles, *([1] * (x.dim() - 1)))

    def freeze(z, hook):  # every head clean, each tile's sender corrupted
        layer = hook.layer()
        tiled = z.view(n_tiles, n_prompts, *z.shape[1:])
        tiled[:] = clean[hook.name]
        for t, (sender_layer, head) in enumerate(chunk):
            if sender_layer == layer:
                tiled[t, :, :, head] = corrupted[hook.name][:, :, head]
        return z

    hooks = [(f"blocks.{layer}.attn.hook_z", freeze) for layer in range(start, model.cfg.n_layers)]
    hooks += _padding_hooks(model, tiled_mask, start)
    from_resid = getattr(metric, "from_resid", None)
    if not receivers:  # the final residual stream: score the first pass
        result = model.run_with_hooks(
            tile(clean[f"blocks.{start}.hook_resid_pre"]), start_at_layer=start,
            stop_at_layer=model.cfg.n_layers if from_resid else None,
            attention_mask=tiled_mask, fwd_hooks=hooks,
        )  # fmt: skip
        return _scores(model, result, n_tiles, n_prompts, metric)

    recorded: dict[str, Tensor] = {}

    def record(act, hook):
        recorded[hook.name] = act.clone()
        return act

    # a receiver before the chunk's first sender reads the clean run: the second pass computes it
    receivers = [r for r in receivers if r.layer >= start]
    receiver_hooks = sorted({r.hook for r in receivers})
    stop = max(r.layer for r in receivers) + 1
    model.run_with_hooks(
        tile(clean[f"blocks.{start}.hook_resid_pre"]), start_at_layer=start, stop_at_layer=stop,
        attention_mask=tiled_mask, fwd_hooks=hooks + [(h, record) for h in receiver_hooks],
    )  # fmt: skip
    heads_of = {h: [r.head for r in receivers if r.hook == h] for h in receiver_hooks}

    def replace(act, hook):
        heads = heads_of[hook.name]
        act[:, :, heads] = recorded[hook.name][:, :, heads]
        return act

    first = min(r.layer for r in receivers)
    result = model.run_with_hooks(
        tile(clean[f"blocks.{first}.hook_resid_pre"]), start_at_layer=first,
        stop_at_layer=model.cfg.n_layers if from_resid else None, attention_mask=tiled_mask,
        fwd_hooks=[(h, replace) for h in receiver_hooks] + _padding_hooks(model, tiled_mask, first),
    )  # fmt: skip
    return _scores(model, result, n_tiles, n_prompts, metric)


def _scores(model, result: Tensor, n_tiles: int, n_prompts: int, metric) -> list[float]:
    return score_tiles(model, result, n_tiles, metric).tolist()


def path_patching_loop(model, clean_tokens, corrupted_tokens, metric, *, receivers=FINAL):
    """:func:`path_patching` the slow, plain way: per sender head, the clean run with the
    sender corrupted and every other head frozen clean (recording the receivers), then, for
    head receivers, the clean run with the recorded receivers. The reference the batched
    version is checked against (tests, ``benchmarks/patching.py``); every sender is run."""
    cfg = model.cfg
    z_only = {"names_filter": lambda name: name.endswith("attn.hook_z")}
    _, clean_cache = model.run_with_cache(clean_tokens, **z_only)
    _, corrupted_cache = model.run_with_cache(corrupted_tokens, **z_only)
    out = torch.empty(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):

            def freeze(z, hook, layer=layer, head=head):
                z[:] = clean_cache[hook.name]
                if hook.layer() == layer:
                    z[:, :, head] = corrupted_cache[hook.name][:, :, head]
                return z

            z_hooks = [(f"blocks.{i}.attn.hook_z", freeze) for i in range(cfg.n_layers)]
            with torch.no_grad():
                if isinstance(receivers, str):
                    out[layer, head] = metric(model.run_with_hooks(clean_tokens, fwd_hooks=z_hooks))
                    continue
                recorded = {}

                def record(act, hook, recorded=recorded):
                    recorded[hook.name] = act.clone()

                names = {r.hook for r in receivers}
                model.run_with_hooks(clean_tokens, fwd_hooks=z_hooks + [(n, record) for n in names])

                def replace(act, hook, recorded=recorded):
                    for r in receivers:
                        if r.hook == hook.name:
                            act[:, :, r.head] = recorded[hook.name][:, :, r.head]
                    return act

                logits = model.run_with_hooks(clean_tokens, fwd_hooks=[(n, replace) for n in names])
                out[layer, head] = metric(logits)
    return out
