"""What the language-model trainer minimises: next-token prediction (the default), a class read
at one position, or a soft target over the legal next moves. Each also gives the validation loss.

A batch is a dict of tensors sharing their first axis: always ``tokens`` (batch pos), what the
objective reads (``labels``, ``targets``), and optionally ``attention_mask`` (batch pos; 1 for a
real token, 0 for padding). The trainer selects every array's rows with the same indices.

Padding is masked with TransformerLens's ``attention_mask`` forward argument. TransformerLens
3.9 applies that mask to attention only in causal models (``apply_causal_mask``); in a
bidirectional one it only moves the positional embeddings, so :func:`padding_hooks` masks the
padded keys there too (as ARENA's balanced-bracket classifier does with hooks on
``hook_attn_scores``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Batch = Mapping[str, torch.Tensor]
ATTENTION_MASK = "attention_mask"


def padding_hooks(
    model: HookedTransformer, attention_mask: Int[torch.Tensor, "batch pos"]
) -> list[tuple[str, Callable]]:
    """Forward hooks that keep every query from attending to padded keys (for ``model.hooks``)."""
    keep = attention_mask.bool()[:, None, None, :]  # batch 1 1 key_pos

    def mask_padded_keys(
        scores: Float[torch.Tensor, "batch head_index query_pos key_pos"], hook
    ) -> Float[torch.Tensor, "batch head_index query_pos key_pos"]:
        return scores.masked_fill(~keep, -torch.inf)

    return [
        (f"blocks.{i}.attn.hook_attn_scores", mask_padded_keys) for i in range(model.cfg.n_layers)
    ]


def masked_logits(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    attention_mask: Int[torch.Tensor, "batch pos"] | None,
) -> Float[torch.Tensor, "batch pos d_vocab_out"]:
    """Logits with padded positions (``attention_mask`` 0) masked out of attention."""
    if attention_mask is None:
        return model(tokens, return_type="logits")
    attention_mask = attention_mask.long()
    if model.cfg.attention_dir == "causal":
        return model(tokens, return_type="logits", attention_mask=attention_mask)
    with model.hooks(fwd_hooks=padding_hooks(model, attention_mask)):
        return model(tokens, return_type="logits", attention_mask=attention_mask)


@dataclass(frozen=True, kw_only=True)
class Objective:
    """A loss over batches; subclasses are frozen dataclasses whose fields are all they are (the
    trainer's resume identity is the class name and those fields).

    ``keys`` names the arrays a batch needs besides ``tokens``.
    """

    keys: ClassVar[tuple[str, ...]] = ()

    def loss(self, model: HookedTransformer, batch: Batch) -> Float[torch.Tensor, ""]:
        """The mean loss the optimiser steps on."""
        raise NotImplementedError

    def loss_terms(self, model: HookedTransformer, batch: Batch) -> tuple[float, float]:
        """``(summed loss, weight)`` of a validation batch; the validation loss is the sum of the
        first over the sum of the second. By default every sequence weighs the same."""
        n = len(batch["tokens"])
        return self.loss(model, batch).item() * n, n

    def check(self, arrays: Mapping[str, np.ndarray], model: HookedTransformer) -> None:
        """Refuse arrays this objective cannot read (before training, with numpy)."""
        missing = [key for key in self.keys if key not in arrays]
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs the arrays {missing} besides tokens, "
                f"got {sorted(arrays)}"
            )
        tokens = arrays["tokens"]
        mask = arrays.get(ATTENTION_MASK)
        if mask is not None:
            if mask.shape != tokens.shape:
                raise ValueError(f"attention_mask {mask.shape} must match tokens {tokens.shape}")
            if not np.asarray(mask).astype(bool).any(axis=1).all():
                raise ValueError("attention_mask: a sequence is all padding")

    def identity(self) -> dict[str, Any]:
        return {"objective": type(self).__name__, **dataclasses.asdict(self)}


@dataclass(frozen=True, kw_only=True)
class NextToken(Objective):
    """Next-token cross-entropy, TransformerLens's ``return_type="loss"`` (positions whose token
    or next token is padding are left out when the batch has an ``attention_mask``)."""

    def loss(self, model: HookedTransformer, batch: Batch) -> Float[torch.Tensor, ""]:
        tokens, mask = batch["tokens"], batch.get(ATTENTION_MASK)
        if mask is None:
            return model(tokens, return_type="loss")
        return model.loss_fn(masked_logits(model, tokens, mask), tokens, mask.long())


@dataclass(frozen=True, kw_only=True)
class ClassifyAtPosition(Objective):
    """Cross-entropy of a class read at one position: the logits over the first ``n_classes``
    output entries (a model with ``d_vocab_out = n_classes`` spends its whole unembedding on
    them, as the balanced-bracket classifier does). Batches hold ``labels`` (batch,) in
    ``[0, n_classes)``.

    Args:
        position: where the class is read (0: the start token of a bidirectional model).
        n_classes: classes, the first entries of the output vocabulary.
        pad_token: tokens equal to it are padding, masked out of attention; None: no padding
            unless the batch brings an ``attention_mask`` (which then wins).
    """

    keys: ClassVar[tuple[str, ...]] = ("labels",)
    position: int = 0
    n_classes: int = 2
    pad_token: int | None = None

    def attention_mask(self, batch: Batch) -> Bool[torch.Tensor, "batch pos"] | None:
        if ATTENTION_MASK in batch:
            return batch[ATTENTION_MASK]
        if self.pad_token is None:
            return None
        return batch["tokens"] != self.pad_token

    def class_logits(
        self, model: HookedTransformer, batch: Batch
    ) -> Float[torch.Tensor, "batch n_classes"]:
        logits = masked_logits(model, batch["tokens"], self.attention_mask(batch))
        return logits[:, self.position, : self.n_classes]

    def loss(self, model: HookedTransformer, batch: Batch) -> Float[torch.Tensor, ""]:
        return F.cross_entropy(self.class_logits(model, batch), batch["labels"].long())

    def loss_terms(self, model: HookedTransformer, batch: Batch) -> tuple[float, float]:
        logits = self.class_logits(model, batch)
        total = F.cross_entropy(logits, batch["labels"].long(), reduction="sum")
        return total.item(), len(logits)

    def check(self, arrays: Mapping[str, np.ndarray], model: HookedTransformer) -> None:
        super().check(arrays, model)
        tokens, labels = arrays["tokens"], np.asarray(arrays["labels"])
        if not 1 <= self.n_classes <= model.cfg.d_vocab_out:
            raise ValueError(
                f"n_classes={self.n_classes} must be in [1, d_vocab_out={model.cfg.d_vocab_out}]"
            )
        if not -tokens.shape[1] <= self.position < tokens.shape[1]:
            raise ValueError(f"position {self.position} outside sequences of {tokens.shape[1]}")
        if labels.shape != (len(tokens),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be integers of shape ({len(tokens)},), got {labels.shape}"
            )
        if len(labels) and not (0 <= labels.min() and labels.max() < self.n_classes):
            raise ValueError(f"labels must lie in [0, {self.n_classes})")
        if ATTENTION_MASK in arrays:
            real = np.asarray(arrays[ATTENTION_MASK]).astype(bool)
        elif self.pad_token is not None:
            real = np.asarray(tokens) != self.pad_token
        else:
            return
        if not real.any(axis=1).all():
            raise ValueError("a sequence is all padding")
        if not real[:, self.position].all():
            raise ValueError(f"the class is read at position {self.position}, which is padding")


@dataclass(frozen=True, kw_only=True)
class SoftTargetNextMove(Objective):
    """Cross-entropy against the uniform distribution over the legal next moves (Othello-GPT).

    Batches hold ``targets`` (batch pos d_vocab_out): ``targets[s, p]`` marks the tokens legal
    after ``tokens[s, : p + 1]``, i.e. what ``logits[s, p]`` predicts (multi-hot; any
    non-negative weights are normalised the same way). A position with no target (padding, the
    end of a game) is left out; the loss is the mean over the remaining positions, which also
    weigh the same in the validation loss.
    """

    keys: ClassVar[tuple[str, ...]] = ("targets",)

    def position_losses(
        self, model: HookedTransformer, batch: Batch
    ) -> tuple[Float[torch.Tensor, "batch pos"], Bool[torch.Tensor, "batch pos"]]:
        """Each position's cross-entropy (0 where it has no target) and which ones have one."""
        logits = masked_logits(model, batch["tokens"], batch.get(ATTENTION_MASK))
        targets = batch["targets"].to(logits.dtype)  # batch pos d_vocab_out
        mass = targets.sum(-1)  # batch pos
        scored = mass > 0
        weights = targets / torch.where(scored, mass, 1.0)[..., None]
        losses = -(weights * logits.log_softmax(-1)).sum(-1)  # batch pos
        return losses, scored

    def loss(self, model: HookedTransformer, batch: Batch) -> Float[torch.Tensor, ""]:
        losses, scored = self.position_losses(model, batch)
        return losses.sum() / scored.sum().clamp_min(1)

    def loss_terms(self, model: HookedTransformer, batch: Batch) -> tuple[float, float]:
        losses, scored = self.position_losses(model, batch)
        return losses.sum().item(), scored.sum().item()

    def check(self, arrays: Mapping[str, np.ndarray], model: HookedTransformer) -> None:
        super().check(arrays, model)
        tokens, targets = arrays["tokens"], arrays["targets"]
        expected = (*tokens.shape, model.cfg.d_vocab_out)
        if targets.shape != expected:
            raise ValueError(
                f"targets must be (seq, pos, d_vocab_out) = {expected}, got {targets.shape}"
            )
        if targets.dtype != bool and (targets < 0).any():
            raise ValueError("targets must be non-negative")
