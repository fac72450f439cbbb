"""Direct logit attribution (DLA): how much each component writes along a residual direction.

The final residual stream is a sum of components: the token and position embeddings, every
head's output ``hook_z @ W_O[l, h]``, each layer's attention bias ``b_O``, and each MLP's output
(``hook_mlp_out``, which includes ``b_out``). The final norm is linear once its scale is fixed,
so with the cached ``ln_final.hook_scale`` each component c is normalised exactly as
``w * (c - mean(c)) / scale`` (no centring for RMS norms, no ``w`` for folded norms), and the
norm's bias b is a component of its own: the normalised components sum to ``ln_final(x)``, and
their dot products with ``W_U[:, t]`` sum to the logit of t minus ``b_U[t]`` (before any soft-cap).

Unlike TransformerLens's ``cache.apply_ln_to_stack``, the norm's weight w is applied here, so the
attributions are exact for models whose norms are not folded into ``W_U`` (our trained models).

Tables label components ``embed``, ``pos_embed``, ``L{l}H{h}``, ``L{l}.b_O``, ``L{l}.mlp_out``
and ``ln_final.b``; their ``layer`` is -1 for the components outside the blocks (embeddings and
the final norm's bias), so the column stays integer; ``head`` is -1 except for heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from mechflow.analysis.losses import token_batches

if TYPE_CHECKING:
    from transformer_lens import ActivationCache, HookedTransformer

KINDS = ("embed", "pos_embed", "head", "attn_bias", "mlp", "ln_bias")

Directions = Float[torch.Tensor, "batch n d_model"]
DirectionsFn = Callable[
    ["HookedTransformer", Int[torch.Tensor, "batch pos"]],
    Directions | tuple[Directions, Bool[torch.Tensor, "batch n"]],
]


@dataclass(frozen=True)
class Component:
    """One term of the final residual stream; ``layer``/``head`` are -1 where they do not apply."""

    label: str
    kind: str
    layer: int = -1
    head: int = -1


def _has_pos_embed(model: HookedTransformer) -> bool:
    """Only learned absolute positions are added to the residual stream (not rotary, shortformer)."""
    return model.cfg.positional_embedding_type == "standard"


def _has_ln_bias(model: HookedTransformer) -> bool:
    return hasattr(model, "ln_final") and getattr(model.ln_final, "b", None) is not None


def _check_supported(model: HookedTransformer) -> None:
    for field in ("post_embedding_ln", "use_normalization_before_and_after"):
        if getattr(model.cfg, field, False):
            raise ValueError(f"{field}=True: the residual stream is not a sum of the cached terms")


def components(model: HookedTransformer) -> list[Component]:
    """The components, in the order of the stacks and tables below."""
    _check_supported(model)
    out = [Component("embed", "embed")]
    if _has_pos_embed(model):
        out.append(Component("pos_embed", "pos_embed"))
    for layer in range(model.cfg.n_layers):
        out += [Component(f"L{layer}H{h}", "head", layer, h) for h in range(model.cfg.n_heads)]
        out.append(Component(f"L{layer}.b_O", "attn_bias", layer))
        if not model.cfg.attn_only:
            out.append(Component(f"L{layer}.mlp_out", "mlp", layer))
    if _has_ln_bias(model):
        out.append(Component("ln_final.b", "ln_bias"))
    return out


def cache_names(model: HookedTransformer) -> list[str]:
    """The hooks a decomposition reads: a ``names_filter`` for ``run_with_cache``."""
    names = ["hook_embed"] + (["hook_pos_embed"] if _has_pos_embed(model) else [])
    for layer in range(model.cfg.n_layers):
        names.append(f"blocks.{layer}.attn.hook_z")
        if not model.cfg.attn_only:
            names.append(f"blocks.{layer}.hook_mlp_out")
    if model.cfg.normalization_type is not None:
        names.append("ln_final.hook_scale")
    return names


def _centres(model: HookedTransformer) -> bool:
    """Whether the final norm subtracts the mean (LayerNorm) rather than only scaling (RMS)."""
    return model.cfg.normalization_type in ("LN", "LNPre") and not model.cfg.final_rms


def _norm_weight(model: HookedTransformer) -> Float[torch.Tensor, " d_model"] | None:
    return getattr(getattr(model, "ln_final", None), "w", None)


def _final_scale(
    model: HookedTransformer, cache: ActivationCache
) -> Float[torch.Tensor, "batch pos 1"] | None:
    return cache["ln_final.hook_scale"] if model.cfg.normalization_type is not None else None


def _block_terms(
    model: HookedTransformer, cache: ActivationCache
) -> list[Float[torch.Tensor, "batch pos d_model"]]:
    """The residual terms before the final norm (no norm bias), in ``components`` order."""
    batch, pos = cache["hook_embed"].shape[:2]
    terms = [cache["hook_embed"]] + ([cache["hook_pos_embed"]] if _has_pos_embed(model) else [])
    for layer, block in enumerate(model.blocks):
        z = cache[f"blocks.{layer}.attn.hook_z"]  # batch pos head_index d_head
        heads = torch.einsum("bphe,hem->hbpm", z, block.attn.W_O)  # head_index batch pos d_model
        terms += list(heads)
        terms.append(block.attn.b_O.expand(batch, pos, -1))
        if not model.cfg.attn_only:
            terms.append(cache[f"blocks.{layer}.hook_mlp_out"])
    return terms


def component_outputs(
    model: HookedTransformer, cache: ActivationCache
) -> tuple[list[Component], Float[torch.Tensor, "component batch pos d_model"]]:
    """Each component as the final norm sees it (cached scale); they sum to ``ln_final(x)``.

    Holds every component at once (for GPT-2 small 171 of them); ``direct_attributions`` gives
    their attributions without materialising them.
    """
    labels = components(model)
    stack = torch.stack(_block_terms(model, cache))  # component batch pos d_model
    scale = _final_scale(model, cache)
    if scale is not None:
        if _centres(model):
            stack = stack - stack.mean(-1, keepdim=True)
        stack = stack / scale
        if (w := _norm_weight(model)) is not None:
            stack = stack * w
    if _has_ln_bias(model):
        bias = model.ln_final.b.expand(1, *stack.shape[1:])
        stack = torch.cat([stack, bias])
    return labels, stack


def attribute(
    components: Float[torch.Tensor, "component batch pos d_model"],
    directions: Float[torch.Tensor, "batch pos d_model"],
) -> Float[torch.Tensor, "component batch pos"]:
    """How far each component writes along a direction, per position (the directions' positions)."""
    n = directions.shape[1]
    return torch.einsum("cbpm,bpm->cbp", components[:, :, :n], directions)


def next_token_directions(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "batch pos-1 d_model"]:
    """``W_U[:, t]`` of the true next token t at positions 0..pos-2: DLA to the correct logit."""
    return model.W_U.T[tokens[:, 1:]]


def logit_difference_directions(
    model: HookedTransformer,
    correct: Int[torch.Tensor, "batch pos"],
    incorrect: Int[torch.Tensor, "batch pos"],
) -> Float[torch.Tensor, "batch pos d_model"]:
    """``W_U[:, a] - W_U[:, b]``: attributions sum to the logit difference minus the b_U one."""
    return model.W_U.T[correct] - model.W_U.T[incorrect]


def direct_attributions(
    model: HookedTransformer,
    cache: ActivationCache,
    directions: Float[torch.Tensor, "batch n d_model"],
) -> Float[torch.Tensor, "component batch n"]:
    """``attribute(component_outputs(...), directions)`` without the d_model-wide stack.

    The norm is moved onto the direction: (w * centre(c) / scale) . d = c . centre(w * d) / scale,
    and heads are contracted through ``W_O`` so only ``hook_z``-sized tensors are made.
    """
    n = directions.shape[1]
    read = directions
    scale = _final_scale(model, cache)
    if scale is not None:
        if (w := _norm_weight(model)) is not None:
            read = read * w
        if _centres(model):
            read = read - read.mean(-1, keepdim=True)
        read = read / scale[:, :n]
    out = [(cache["hook_embed"][:, :n] * read).sum(-1)]
    if _has_pos_embed(model):
        out.append((cache["hook_pos_embed"][:, :n] * read).sum(-1))
    for layer, block in enumerate(model.blocks):
        z = cache[f"blocks.{layer}.attn.hook_z"][:, :n]  # batch n head_index d_head
        head_read = torch.einsum("hem,bpm->bphe", block.attn.W_O, read)  # batch n head_index d_head
        out += list((z * head_read).sum(-1).permute(2, 0, 1))  # head_index x (batch n)
        out.append(read @ block.attn.b_O)
        if not model.cfg.attn_only:
            out.append((cache[f"blocks.{layer}.hook_mlp_out"][:, :n] * read).sum(-1))
    if _has_ln_bias(model):
        out.append(directions @ model.ln_final.b)
    return torch.stack(out)


class AttributionAccumulator:
    """Running float64 sums of each component's attribution, its square and its absolute value."""

    def __init__(self):
        self.sums: torch.Tensor | None = None  # stat component
        self.count = 0

    def update(
        self,
        attributions: Float[torch.Tensor, "component batch n"],
        mask: Bool[torch.Tensor, "batch n"] | None = None,
    ) -> None:
        flat = attributions.flatten(1).double()  # component entry
        if mask is not None:
            flat = flat[:, mask.flatten()]
        sums = torch.stack([flat.sum(1), flat.square().sum(1), flat.abs().sum(1)]).cpu()
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += flat.shape[1]

    def result(self) -> dict[str, Float[torch.Tensor, " component"]]:
        if self.sums is None or self.count == 0:
            raise ValueError("no attributions were seen")
        total, squares, absolute = self.sums
        mean = total / self.count
        var = (squares - total * mean) / max(self.count - 1, 1)  # sample variance
        return {"mean": mean, "std": var.clamp_min(0).sqrt(), "mean_abs": absolute / self.count}


@torch.inference_mode()
def logit_attribution_table(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "seq pos"] | Int[torch.Tensor, "seq pos"],
    batch_size: int,
    device: torch.device | str = "cpu",
    directions_fn: DirectionsFn | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per component: ``component``, ``kind``, ``layer``, ``head``, ``mean``, ``std``,
    ``mean_abs`` of its direct attribution over all attributed positions of all sequences.

    ``directions_fn(model, batch)`` gives the directions at positions 0..n-1 (default: the true
    next token's unembedding, n = pos - 1), optionally with a boolean mask of the positions to
    count (e.g. only each prompt's answer position for a logit difference).
    """
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.cpu().numpy()
    directions_fn = directions_fn or next_token_directions
    names = cache_names(model)
    acc = AttributionAccumulator()
    for batch in token_batches(tokens, batch_size, device, progress, desc="logit attribution"):
        directions = directions_fn(model, batch)
        mask = None
        if isinstance(directions, tuple):
            directions, mask = directions
        _, cache = model.run_with_cache(batch, names_filter=names, return_type=None)
        acc.update(direct_attributions(model, cache, directions), mask)
    stats = acc.result()
    table = pd.DataFrame(
        [(c.label, c.kind, c.layer, c.head) for c in components(model)],
        columns=["component", "kind", "layer", "head"],
    )
    for name, values in stats.items():
        table[name] = values.numpy()
    return table


def head_attribution_matrix(
    table: pd.DataFrame, column: str = "mean"
) -> Float[np.ndarray, "layer head_index"]:
    """One statistic of the heads' rows of ``logit_attribution_table`` as a (layer, head) array."""
    heads = table[table["kind"] == "head"]
    if heads.empty:
        raise ValueError("the table has no head components")
    matrix = np.full((heads["layer"].max() + 1, heads["head"].max() + 1), np.nan)
    matrix[heads["layer"].to_numpy(), heads["head"].to_numpy()] = heads[column].to_numpy()
    return matrix
