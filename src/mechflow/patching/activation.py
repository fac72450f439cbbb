"""Activation patching with many patches per forward pass.

For each patched layer the corrupted prompts are repeated once per index into one batch (tile
``t`` of the batch is prompt set ``t``), and a single hook puts index ``t``'s clean activation
into tile ``t``. The forward pass starts at the patched layer, from the corrupted run's cached
``hook_resid_pre`` (nothing before the patch depends on it), and a metric with a
``from_resid`` method reads the last residual stream instead of every logit. The result is
laid out as TransformerLens's ``patching.get_act_patch_*`` lays it out, and equals it (tests:
1e-4): the computation after the patch is the same, only batched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Metric = Callable[[Float[Tensor, "prompt pos d_vocab"]], Tensor]


@dataclass(frozen=True)
class PatchKind:
    """Where a kind of activation lives and how one index of it is addressed.

    ``hook`` is the hook name with ``{layer}``; ``axes`` the index axes after ``layer``, all
    positions at once and by position; ``where`` maps an index to the activation's subscript
    after the batch axis.
    """

    hook: str
    axes: tuple[str, ...]
    axes_by_pos: tuple[str, ...] | None

    def index_axes(self, by_pos: bool) -> tuple[str, ...]:
        if by_pos and self.axes_by_pos is None:
            raise ValueError(f"{self.hook}: patched at every position only (by_pos=False)")
        return self.axes_by_pos if by_pos else self.axes


_POS = ("pos",)
_KINDS = {
    # residual stream and sublayer outputs: batch pos d_model
    "resid_pre": PatchKind("blocks.{layer}.hook_resid_pre", _POS, None),
    "resid_mid": PatchKind("blocks.{layer}.hook_resid_mid", _POS, None),
    "attn_out": PatchKind("blocks.{layer}.hook_attn_out", _POS, None),
    "mlp_out": PatchKind("blocks.{layer}.hook_mlp_out", _POS, None),
    # per-head vectors: batch pos head d_head (z is what the head writes, before W_O)
    "z": PatchKind("blocks.{layer}.attn.hook_z", ("head",), ("pos", "head")),
    "q": PatchKind("blocks.{layer}.attn.hook_q", ("head",), ("pos", "head")),
    "k": PatchKind("blocks.{layer}.attn.hook_k", ("head",), ("pos", "head")),
    "v": PatchKind("blocks.{layer}.attn.hook_v", ("head",), ("pos", "head")),
    # attention patterns: batch head dest_pos src_pos
    "pattern": PatchKind("blocks.{layer}.attn.hook_pattern", ("head",), ("head", "dest_pos")),
}


def patch_kinds() -> list[str]:
    """The activation kinds :func:`activation_patching` patches."""
    return list(_KINDS)


def _subscript(kind: str, axes: tuple[str, ...], index: tuple[int, ...]) -> tuple:
    """The activation's subscript (after the batch axis) that holds ``index``."""
    named = dict(zip(axes, index, strict=True))
    if kind == "pattern":  # head dest src
        return (named["head"], named["dest_pos"]) if "dest_pos" in named else (named["head"],)
    if "head" in named:  # pos head d_head
        return (named.get("pos", slice(None)), named["head"])
    return (named["pos"],)  # pos d_model


def _axis_sizes(model: HookedTransformer, kind: str, n_pos: int) -> dict[str, int]:
    heads = model.cfg.n_heads
    if kind in ("k", "v") and getattr(model.cfg, "n_key_value_heads", None):
        heads = model.cfg.n_key_value_heads
    return {"pos": n_pos, "dest_pos": n_pos, "head": heads}


def _tiles(batch_size: int, n_prompts: int) -> int:
    return max(1, batch_size // n_prompts)


@torch.inference_mode()
def activation_patching(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "prompt pos"],
    corrupted_tokens: Int[Tensor, "prompt pos"],
    kind: str,
    metric: Metric,
    *,
    by_pos: bool = False,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    attention_mask: Int[Tensor, "prompt pos"] | None = None,
) -> Tensor:
    """The metric after patching each index of ``kind`` from the clean run into the corrupted run.

    Args:
        kind: one of :func:`patch_kinds` (``z`` is a head's output).
        metric: logits ``(prompt, pos, d_vocab)`` -> scalar, as TransformerLens's; one with a
            ``from_resid(model, resid)`` method (e.g. :class:`LogitDifference`) is read from
            the last residual stream instead, without the full unembedding.
        by_pos: per-head kinds: patch each (position, head) (``pattern``: each (head,
            destination)) instead of each head at every position.
        layers: the layers to patch (default all): a sweep's shard.
        batch_size: sequences per forward pass (prompts x indices patched at once).
        attention_mask: 1 for real tokens, 0 for padding, as TransformerLens's forward takes it.

    Returns:
        ``(layer, *axes)`` in TransformerLens's layout: ``(layer, pos)`` for the residual stream
        and sublayer outputs, ``(layer, head)`` for heads, ``(layer, pos, head)`` by position
        (``pattern``: ``(layer, head, dest_pos)``); rows in the order of ``layers``.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown patch kind {kind!r}; allowed: {patch_kinds()}")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean and corrupted tokens differ in shape: {tuple(clean_tokens.shape)} vs "
            f"{tuple(corrupted_tokens.shape)}"
        )
    spec = _KINDS[kind]
    axes = spec.index_axes(by_pos)
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model of {n_layers} layers")
    hooks = [spec.hook.format(layer=layer) for layer in layers]
    missing = [hook for hook in hooks if hook not in model.hook_dict]
    if missing:
        raise ValueError(f"the model has no hook {missing[0]!r} (patch kind {kind!r})")

    device = next(model.parameters()).device
    clean_tokens, corrupted_tokens = clean_tokens.to(device), corrupted_tokens.to(device)
    mask = None if attention_mask is None else attention_mask.to(device)
    starts = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    read = _read_positions(model, kind, axes, metric)
    clean_cache, corrupted_cache = both_runs(
        model, clean_tokens, corrupted_tokens, set(hooks),
        {*starts, last} if read is not None else set(starts), mask, max(layers) + 1,
    )  # fmt: skip
    silent = [hook for hook in hooks if hook not in clean_cache]
    if silent:  # e.g. hook_mlp_out of an attention-only model exists but never fires
        raise ValueError(f"the model has no hook {silent[0]!r} that fires (patch kind {kind!r})")
    n_prompts, n_pos = clean_tokens.shape
    sizes = _axis_sizes(model, kind, n_pos)
    grid = torch.cartesian_prod(*[torch.arange(sizes[a]) for a in axes]).reshape(-1, len(axes))
    indices = [tuple(int(i) for i in row) for row in grid]
    tiles = _tiles(batch_size, n_prompts)
    out = torch.empty(len(layers), len(indices))
    # One hook per patched layer for the whole sweep (adding and removing TransformerLens
    # hooks costs ~1 ms a pass on a small model); each pass sets what it patches.
    current: dict[str, object] = {}

    def patch(activation: Tensor, hook) -> Tensor:
        if hook.name == current["hook"]:
            tiled = activation.view(current["tiles"], n_prompts, *activation.shape[1:])
            tiled[current["target"]] = current["value"]
        return activation

    with model.hooks(fwd_hooks=[(hook, patch) for hook in dict.fromkeys(hooks)]):
        for row, (layer, hook, start) in enumerate(zip(layers, hooks, starts, strict=True)):
            clean = clean_cache[hook]
            todo = list(range(len(indices)))
            if read is not None and layer == n_layers - 1:
                axis, positions = read
                todo = [i for i in todo if indices[i][axis] in positions]
                # the rest cannot reach a position the metric reads: the corrupted run's score
                out[row] = float(metric.from_resid(model, corrupted_cache[last]))
            for first in range(0, len(todo), tiles):
                done = todo[first : first + tiles]
                chunk = [indices[i] for i in done]
                target, source, tile_axis = _tile_indices(
                    [_subscript(kind, axes, i) for i in chunk]
                )
                current.update(
                    hook=hook, tiles=len(chunk), target=target,
                    value=clean[source].movedim(tile_axis, 0),  # tile prompt ...
                )  # fmt: skip
                out[row, done] = _tiled_run(
                    model, corrupted_cache[start], layer, len(chunk), metric, mask
                )
    return out.reshape(len(layers), *[sizes[a] for a in axes])


# Kinds whose patch at one position of the last layer changes only that position's output (the
# rest of the block is per position); k/v and the residual stream before attention feed later
# queries too.
_OWN_POSITION_AT_LAST_LAYER = frozenset({"resid_mid", "attn_out", "mlp_out", "z", "q", "pattern"})


def _read_positions(model, kind: str, axes: tuple[str, ...], metric) -> tuple[int, set] | None:
    """``(index axis, positions the metric reads)`` where last-layer patches elsewhere are known
    to leave the metric at the corrupted run's value: a causal model, a by-position kind of
    :data:`_OWN_POSITION_AT_LAST_LAYER`, a metric that says where it reads (``positions``) and
    reads the residual stream (``from_resid``). None: every index is run."""
    axis = next((i for i, a in enumerate(axes) if a in ("pos", "dest_pos")), None)
    if (
        axis is None
        or kind not in _OWN_POSITION_AT_LAST_LAYER
        or model.cfg.attention_dir != "causal"
        or not hasattr(metric, "from_resid")
        or getattr(metric, "positions", None) is None
    ):
        return None
    return axis, set(torch.as_tensor(metric.positions).tolist())


def _tiled_run(
    model: HookedTransformer,
    start_resid: Float[Tensor, "prompt pos d_model"],
    layer: int,
    n_tiles: int,
    metric: Metric,
    mask: Tensor | None,
) -> Tensor:
    """One forward pass from ``layer`` over ``n_tiles`` copies of the prompts (the hooks in
    place patch them); the metric per tile."""
    resid = start_resid.repeat(n_tiles, 1, 1)
    tiled_mask = None if mask is None else mask.repeat(n_tiles, 1)
    from_resid = getattr(metric, "from_resid", None)
    padding = _padding_hooks(model, tiled_mask, layer)
    with model.hooks(fwd_hooks=padding) if padding else contextlib.nullcontext():
        result = model(
            resid,
            start_at_layer=layer,
            stop_at_layer=model.cfg.n_layers if from_resid else None,
            attention_mask=tiled_mask,
        )
    return score_tiles(model, result, n_tiles, metric)


def both_runs(
    model: HookedTransformer,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    clean_names: set[str],
    corrupted_names: set[str],
    mask: Tensor | None,
    stop_at_layer: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The activations ``clean_names`` of the clean run and ``corrupted_names`` of the
    corrupted run, from one forward pass over both (stacked), stopped after the last block
    they need (``None``: the whole model)."""
    n = len(clean_tokens)
    names = clean_names | corrupted_names
    both_mask = None if mask is None else torch.cat([mask, mask])
    with model.hooks(fwd_hooks=_padding_hooks(model, both_mask, 0)):
        _, cache = model.run_with_cache(
            torch.cat([clean_tokens, corrupted_tokens]), names_filter=lambda name: name in names,
            attention_mask=both_mask, stop_at_layer=stop_at_layer,
        )  # fmt: skip
    clean = {k: v[:n] for k, v in cache.cache_dict.items() if k in clean_names}
    corrupted = {k: v[n:] for k, v in cache.cache_dict.items() if k in corrupted_names}
    return clean, corrupted


def _tile_indices(subscripts: list[tuple]) -> tuple[tuple, tuple, int]:
    """One advanced index for every tile's patch: ``tiled[target] = clean[source]`` moved so
    its tile axis (``tile_axis``) comes first. Every subscript has the same form (ints where an
    index is chosen, full slices elsewhere)."""
    first = subscripts[0]
    per_axis = [
        torch.tensor([sub[k] for sub in subscripts]) if isinstance(first[k], int) else slice(None)
        for k in range(len(first))
    ]
    source = (slice(None), *per_axis)
    tiles = torch.arange(len(subscripts))
    target = (tiles, slice(None), *per_axis)
    # clean[source]: prompt, the full slices before the first chosen axis, then the tile axis
    leading = next(k for k, a in enumerate(per_axis) if not isinstance(a, slice))
    return target, source, 1 + leading


def score_tiles(model, result: Tensor, n_tiles: int, metric) -> Tensor:
    """The metric of each tile of a tiled forward pass's output (logits, or the last residual
    stream for a metric with ``from_resid``; one with ``per_tile`` scores every tile at once)."""
    if hasattr(metric, "per_tile"):
        return metric.per_tile(model, result, n_tiles).float().cpu()
    tiled = result.view(n_tiles, -1, *result.shape[1:])
    from_resid = getattr(metric, "from_resid", None)
    score = (lambda r: from_resid(model, r)) if from_resid else metric
    return torch.stack([score(tiled[t]).float().reshape(()) for t in range(n_tiles)]).cpu()


def _padding_hooks(model: HookedTransformer, mask: Tensor | None, first_layer: int) -> list:
    """A bidirectional model ignores ``attention_mask`` in attention (TransformerLens 3.9): mask
    its padded keys with hooks, as the trainer does (``objectives.padding_hooks``)."""
    if mask is None or model.cfg.attention_dir == "causal":
        return []
    from mechflow.models.objectives import padding_hooks

    return [
        (name, fn)
        for name, fn in padding_hooks(model, mask)
        if int(name.split(".")[1]) >= first_layer
    ]
