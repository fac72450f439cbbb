"""Trained probes and what they predict: one weight tensor for every (hook, target) probe.

The weights act on standardised inputs, ``(x - mean) / std`` per hook and feature, the space
they were trained in; :meth:`Probes.raw_weights` folds the statistics in, for directions in the
model's own activation space (to compare or intervene along). Internally every probe of a hook
is one column block of a ``(d_model, classes * targets)`` matrix, so all of a hook's probes
are one matrix product (one ``baddbmm`` over hooks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from mechflow.probes.config import ProbeConfig
from mechflow.probes.sources import ProbeSource, as_source

PREDICT_ROWS = 4096  # rows per matrix product when predicting


@dataclass(frozen=True, kw_only=True, eq=False)  # tensors: no elementwise ==
class Probes:
    """Multinomial logistic probes, one per (hook, target).

    Args:
        weight: ``(hook, target, d_model, class)``, on standardised inputs.
        bias: ``(hook, target, class)``.
        mean, std: ``(hook, d_model)``: the standardisation (0 and 1 when it was off).
        hook_names, target_names, class_names: the axes' labels.
        config: how they were trained.
        source: what they were trained on (a store's provenance, or an array's shape).
    """

    weight: Float[torch.Tensor, "hook target d_model n_class"]
    bias: Float[torch.Tensor, "hook target n_class"]
    mean: Float[torch.Tensor, "hook d_model"]
    std: Float[torch.Tensor, "hook d_model"]
    hook_names: tuple[str, ...]
    target_names: tuple[str, ...]
    class_names: tuple[str, ...]
    config: ProbeConfig
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        H, T, D, C = self.weight.shape
        expected = {"bias": (H, T, C), "mean": (H, D), "std": (H, D)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"{name}: shape {tuple(getattr(self, name).shape)} does not match weight "
                    f"{tuple(self.weight.shape)} (expected {shape})"
                )
        counts = {"hook_names": H, "target_names": T, "class_names": C}
        for name, n in counts.items():
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: {len(getattr(self, name))} names for {n} entries")
        if C != self.config.n_classes:
            raise ValueError(f"weight has {C} classes, config.n_classes is {self.config.n_classes}")

    @property
    def d_model(self) -> int:
        return int(self.weight.shape[2])

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def to(self, device: torch.device | str) -> Probes:
        moved = {k: getattr(self, k).to(device) for k in ("weight", "bias", "mean", "std")}
        return dataclasses.replace(self, **moved)

    def raw_weights(
        self,
    ) -> tuple[
        Float[torch.Tensor, "hook target d_model n_class"],
        Float[torch.Tensor, "hook target n_class"],
    ]:
        """Weight and bias acting on raw activations: ``x @ w + b`` equals the probes' logits."""
        w = self.weight / self.std[:, None, :, None]
        b = self.bias - torch.einsum("hd,htdc->htc", self.mean, w)
        return w, b


def packed(
    weight: Float[torch.Tensor, "hook target d_model n_class"],
    bias: Float[torch.Tensor, "hook target n_class"],
) -> tuple[Float[torch.Tensor, "hook d_model ct"], Float[torch.Tensor, "hook 1 ct"]]:
    """The training layout: column ``c * targets + t`` is class c of target t."""
    H, T, D, C = weight.shape
    return (
        weight.permute(0, 2, 3, 1).reshape(H, D, C * T).contiguous(),
        bias.permute(0, 2, 1).reshape(H, 1, C * T).contiguous(),
    )


def unpacked(
    w: Float[torch.Tensor, "hook d_model ct"], b: Float[torch.Tensor, "hook 1 ct"], n_classes: int
) -> tuple[
    Float[torch.Tensor, "hook target d_model n_class"], Float[torch.Tensor, "hook target n_class"]
]:
    H, D, CT = w.shape
    T = CT // n_classes
    weight = w.reshape(H, D, n_classes, T).permute(0, 3, 1, 2).contiguous()
    return weight, b.reshape(H, n_classes, T).permute(0, 2, 1).contiguous()


def packed_logits(
    x: Float[torch.Tensor, "hook row d_model"],
    w: Float[torch.Tensor, "hook d_model ct"],
    b: Float[torch.Tensor, "hook 1 ct"],
    n_classes: int,
) -> Float[torch.Tensor, "hook row n_class target"]:
    H, B, _ = x.shape
    return torch.baddbmm(b, x, w).view(H, B, n_classes, -1)


def predict_logits(
    probes: Probes, acts: ProbeSource | np.ndarray | torch.Tensor
) -> Float[torch.Tensor, "hook row target n_class"]:
    """Every probe's logits on raw activations ``(hooks, rows, d_model)`` (an array, a tensor
    or a source, streamed), on the probes' device."""
    return torch.cat(list(_logit_blocks(probes, acts)), dim=1).permute(0, 1, 3, 2)


def predict_proba(
    probes: Probes, acts: ProbeSource | np.ndarray | torch.Tensor
) -> Float[torch.Tensor, "hook row target n_class"]:
    return torch.cat([blk.softmax(2) for blk in _logit_blocks(probes, acts)], 1).permute(0, 1, 3, 2)


def predict(
    probes: Probes, acts: ProbeSource | np.ndarray | torch.Tensor
) -> Int[torch.Tensor, "hook row target"]:
    """The most likely class of every (hook, row, target)."""
    return torch.cat([class_argmax(blk) for blk in _logit_blocks(probes, acts)], dim=1)


def class_argmax(
    logits: Float[torch.Tensor, "hook row n_class target"],
) -> Int[torch.Tensor, "hook row target"]:
    """``logits.argmax(2)`` (first maximum wins), one pass per class: torch's argmax over a
    middle axis runs ~20x slower on CPU than these comparisons."""
    best = logits[:, :, 0]
    index = torch.zeros(best.shape, dtype=torch.long, device=logits.device)
    for c in range(1, logits.shape[2]):
        value = logits[:, :, c]
        better = value > best
        best = torch.where(better, value, best)
        index.masked_fill_(better, c)
    return index


def _logit_blocks(
    probes: Probes, acts: ProbeSource | np.ndarray | torch.Tensor
) -> Iterator[Float[torch.Tensor, "hook row n_class target"]]:
    source = as_source(acts)
    if isinstance(acts, np.ndarray | torch.Tensor):
        if len(source.hook_names) != len(probes.hook_names):
            raise ValueError(
                f"acts: {len(source.hook_names)} hooks, the probes have "
                f"{len(probes.hook_names)} ({list(probes.hook_names)})"
            )
    elif tuple(source.hook_names) != probes.hook_names:
        raise ValueError(
            f"acts: hooks {list(source.hook_names)} differ from the probes' {list(probes.hook_names)}"
        )
    if source.d_model != probes.d_model:
        raise ValueError(f"acts: d_model {source.d_model}, the probes read {probes.d_model}")
    w, b = packed(probes.weight, probes.bias)
    mean, std = probes.mean[:, None, :], probes.std[:, None, :]
    with torch.no_grad():
        for start, stop in source.chunks():
            chunk = source.read(start, stop)
            for s in range(0, stop - start, PREDICT_ROWS):
                x = chunk[:, s : s + PREDICT_ROWS].to(probes.device, torch.float32)
                yield packed_logits((x - mean) / std, w, b, probes.config.n_classes)
