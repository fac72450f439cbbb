"""Attribution patching (Nanda 2023) and edge attribution patching (Syed, Rager and Conmy 2023):
every patch's effect from two forward passes and one backward pass, to first order.

The effect of patching an activation from the clean run into the corrupted run is approximated
by ``(clean - corrupted) . d metric / d activation`` at the corrupted run. It is exact where the
metric is linear in the activation (a last-layer head of a model without LayerNorm or MLPs) and
poor where attention saturates or LayerNorm bends; the table of attribution against exact
patching says which.

Edge attribution scores an edge from a sender's output (each head, each MLP, the embeddings)
to a receiver's input (each head's query, key and value, each MLP, the logits) the same way:
``(clean - corrupted sender output) . d metric / d receiver input``. One backward pass gives the
gradient at every receiver input, so all edges cost a matrix product.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from jaxtyping import Int
from torch import Tensor

from mechflow.patching.activation import Metric, _padding_hooks

_HEAD_KINDS = {"z": "attn.hook_z", "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v"}
_POS_KINDS = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}


def _metric_value(model, logits_or_resid: Tensor, metric: Metric, from_resid: bool) -> Tensor:
    return metric.from_resid(model, logits_or_resid) if from_resid else metric(logits_or_resid)


def attribution_patching(
    model,
    clean_tokens: Int[Tensor, "prompt pos"],
    corrupted_tokens: Int[Tensor, "prompt pos"],
    kind: str,
    metric: Metric,
    *,
    by_pos: bool = False,
    attention_mask: Int[Tensor, "prompt pos"] | None = None,
) -> Tensor:
    """First-order estimate of ``metric(patched) - metric(corrupted)`` for every index of
    ``kind``, laid out as :func:`activation_patching` lays out its result: ``(layer, pos)``
    for ``resid_pre``, ``resid_mid``, ``attn_out``, ``mlp_out``; ``(layer, head)`` (all
    positions) or ``(layer, pos, head)`` (``by_pos``) for ``z``, ``q``, ``k``, ``v``."""
    if kind in _HEAD_KINDS:
        suffix = _HEAD_KINDS[kind]
    elif kind in _POS_KINDS:
        if by_pos:
            raise ValueError(f"{kind}: attributed at each position already (by_pos=False)")
        suffix = _POS_KINDS[kind]
    else:
        raise ValueError(
            f"unknown attribution kind {kind!r}; allowed: {[*_POS_KINDS, *_HEAD_KINDS]}"
        )
    names = [f"blocks.{layer}.{suffix}" for layer in range(model.cfg.n_layers)]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ValueError(f"the model has no hook {missing[0]!r} (attribution kind {kind!r})")
    clean_acts, corrupted_acts, grads = _acts_and_grads(
        model, clean_tokens, corrupted_tokens, names, metric, attention_mask
    )
    silent = [n for n in names if n not in grads]
    if silent:
        raise ValueError(f"the model has no hook {silent[0]!r} that fires (kind {kind!r})")
    rows = []
    for name in names:
        delta = (clean_acts[name] - corrupted_acts[name]) * grads[name]
        if kind in _HEAD_KINDS:  # batch pos head d_head
            per = delta.sum(dim=(0, 3))  # pos head
            rows.append(per if by_pos else per.sum(0))
        else:  # batch pos d_model
            rows.append(delta.sum(dim=(0, 2)))
    return torch.stack(rows).cpu()


def _acts_and_grads(model, clean_tokens, corrupted_tokens, names, metric, attention_mask):
    """Activations at ``names`` of both runs, and the metric's gradient at the corrupted run's.
    The gradient of a mean over prompts is split back per prompt by the sums above."""
    device = next(model.parameters()).device
    clean_tokens, corrupted_tokens = clean_tokens.to(device), corrupted_tokens.to(device)
    mask = None if attention_mask is None else attention_mask.to(device)
    padding = _padding_hooks(model, mask, 0)
    with torch.inference_mode(), model.hooks(fwd_hooks=padding):
        _, clean_cache = model.run_with_cache(
            clean_tokens, names_filter=lambda n: n in names, attention_mask=mask
        )
    live: dict[str, Tensor] = {}

    def keep(act, hook):
        live[hook.name] = act
        return act

    from_resid = hasattr(metric, "from_resid")
    hooks = [(n, keep) for n in names] + padding
    with torch.enable_grad(), _tracked(model), model.hooks(fwd_hooks=hooks):
        out = model(
            corrupted_tokens, attention_mask=mask,
            stop_at_layer=model.cfg.n_layers if from_resid else None,
        )  # fmt: skip
        value = _metric_value(model, out, metric, from_resid)
        fired = list(live)
        if not fired:  # e.g. hook_mlp_out of an attention-only model never fires
            raise ValueError(f"the model has no hook {names[0]!r} that fires")
        # gradients at the activations only: no parameter's .grad is touched
        found = torch.autograd.grad(value, [live[n] for n in fired], allow_unused=True)
    grads = {
        n: torch.zeros_like(live[n]) if g is None else g.detach()
        for n, g in zip(fired, found, strict=True)
    }
    corrupted_acts = {n: live[n].detach() for n in fired}
    return dict(clean_cache.cache_dict), corrupted_acts, grads


@contextmanager
def _tracked(model):
    """Parameters that require grad (a loaded model's may not), so every activation is in the
    graph; ``autograd.grad`` then leaves their ``.grad`` alone."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def attribution_vs_patching(
    attribution: Tensor, patched: Tensor, corrupted_score: float
) -> tuple[Tensor, float]:
    """Exact effects ``patched - corrupted_score`` beside the attributions, and their Pearson
    correlation over every index."""
    exact = patched - corrupted_score
    a, e = attribution.flatten().double(), exact.flatten().double()
    a, e = a - a.mean(), e - e.mean()
    corr = float((a @ e) / (a.norm() * e.norm()).clamp_min(1e-30))
    return exact, corr


def edge_attribution_patching(
    model,
    clean_tokens: Int[Tensor, "prompt pos"],
    corrupted_tokens: Int[Tensor, "prompt pos"],
    metric: Metric,
    *,
    attention_mask: Int[Tensor, "prompt pos"] | None = None,
) -> tuple[Tensor, list[str], list[str]]:
    """Scores of every edge from a sender output to a downstream receiver input.

    Senders: ``embed`` (token and position embeddings), ``a{L}.{H}`` (each head's output,
    ``z @ W_O``), ``m{L}`` (each MLP's output). Receivers: ``a{L}.{H}.q``/``.k``/``.v`` (each
    head's inputs), ``m{L}`` (each MLP's input), ``logits`` (the final residual stream).
    Returns ``(scores (sender, receiver), senders, receivers)``; an edge from a sender that is
    not upstream of its receiver scores 0.
    """
    cfg = model.cfg
    flags = {
        "use_split_qkv_input": cfg.use_split_qkv_input,
        "use_hook_mlp_in": cfg.use_hook_mlp_in,
        "use_attn_result": cfg.use_attn_result,
    }
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    if not cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    try:
        return _edges(model, clean_tokens, corrupted_tokens, metric, attention_mask)
    finally:
        model.set_use_split_qkv_input(flags["use_split_qkv_input"])
        model.set_use_attn_result(flags["use_attn_result"])
        if not cfg.attn_only:
            model.set_use_hook_mlp_in(flags["use_hook_mlp_in"])


def _edges(model, clean_tokens, corrupted_tokens, metric, attention_mask):
    cfg = model.cfg
    n_layers, n_heads, has_mlp = cfg.n_layers, cfg.n_heads, not cfg.attn_only
    final = f"blocks.{n_layers - 1}.hook_resid_post"
    embed = ["hook_embed"] + (["hook_pos_embed"] if "hook_pos_embed" in model.hook_dict else [])
    out_names = [*embed]
    in_names = []
    for layer in range(n_layers):
        out_names.append(f"blocks.{layer}.attn.hook_result")
        in_names += [f"blocks.{layer}.hook_{x}_input" for x in "qkv"]
        if has_mlp:
            out_names.append(f"blocks.{layer}.hook_mlp_out")
            in_names.append(f"blocks.{layer}.hook_mlp_in")
    in_names.append(final)
    clean_acts, corrupted_acts, grads = _acts_and_grads(
        model, clean_tokens, corrupted_tokens, [*out_names, *in_names], metric, attention_mask
    )

    senders, deltas, sender_layer = [], [], []  # delta: batch*pos d_model per sender
    delta_embed = sum(clean_acts[n] - corrupted_acts[n] for n in embed)
    senders.append("embed")
    deltas.append(delta_embed.flatten(0, 1))
    sender_layer.append((-1, 2))  # (layer, stage): embed before everything
    for layer in range(n_layers):
        name = f"blocks.{layer}.attn.hook_result"
        delta = clean_acts[name] - corrupted_acts[name]  # batch pos head d_model
        for head in range(n_heads):
            senders.append(f"a{layer}.{head}")
            deltas.append(delta[:, :, head].flatten(0, 1))
            sender_layer.append((layer, 0))
        if has_mlp:
            name = f"blocks.{layer}.hook_mlp_out"
            senders.append(f"m{layer}")
            deltas.append((clean_acts[name] - corrupted_acts[name]).flatten(0, 1))
            sender_layer.append((layer, 1))

    receivers, receiver_grads, receiver_layer = [], [], []
    for layer in range(n_layers):
        for x in "qkv":
            grad = grads[f"blocks.{layer}.hook_{x}_input"]  # batch pos head d_model
            for head in range(n_heads):
                receivers.append(f"a{layer}.{head}.{x}")
                receiver_grads.append(grad[:, :, head].flatten(0, 1))
                receiver_layer.append((layer, 0))
        if has_mlp:
            receivers.append(f"m{layer}")
            receiver_grads.append(grads[f"blocks.{layer}.hook_mlp_in"].flatten(0, 1))
            receiver_layer.append((layer, 1))
    receivers.append("logits")
    receiver_grads.append(grads[final].flatten(0, 1))
    receiver_layer.append((n_layers, 0))

    scores = torch.einsum(
        "snd,rnd->sr", torch.stack(deltas).double(), torch.stack(receiver_grads).double()
    ).float()
    upstream = torch.tensor(
        [[_before(s, r) for r in receiver_layer] for s in sender_layer], dtype=torch.bool
    )
    return (scores * upstream).cpu(), senders, receivers


def _before(sender: tuple[int, int], receiver: tuple[int, int]) -> bool:
    """Whether a sender (layer, stage) writes to the residual stream a receiver reads: heads
    (stage 0) read before their layer's heads write; MLPs (stage 1) after them."""
    (s_layer, s_stage), (r_layer, r_stage) = sender, receiver
    if s_layer == -1:
        return True
    return s_layer < r_layer or (s_layer == r_layer and s_stage < r_stage)
