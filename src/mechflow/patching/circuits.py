"""Circuit evaluation as Wang et al. (2022) do it: keep a set of heads, mean-ablate every other
head (its output replaced by its mean over the corrupted distribution, per group of prompts whose
positions line up, e.g. an IOI template and prefix), and compare the metric with the whole
model's: faithfulness F(C) / F(M). A random circuit of the same size is the baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

Head = tuple[int, int]


@torch.inference_mode()
def group_means(
    model, corrupted_tokens: Int[Tensor, "prompt pos"], groups: Sequence[int]
) -> dict[int, Tensor]:
    """Per layer, each head's ``hook_z`` averaged over the corrupted prompts of each group:
    ``{layer: (n_groups, pos, head, d_head)}``, groups numbered by ``np.unique(groups)``."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(
        torch.as_tensor(corrupted_tokens), names_filter=lambda n: n in names
    )
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    index = torch.as_tensor(inverse)
    n_groups = int(index.max()) + 1
    out = {}
    for layer, name in enumerate(names):
        z = cache[name]  # prompt pos head d_head
        total = torch.zeros(n_groups, *z.shape[1:], dtype=z.dtype).index_add_(0, index, z)
        counts = torch.bincount(index, minlength=n_groups).to(z.dtype)
        out[layer] = total / counts[:, None, None, None]
    return out


def ablation_hooks(
    model, groups: Sequence[int], means: dict[int, Tensor], ablate: Iterable[Head]
) -> list:
    """Forward hooks that replace each head of ``ablate`` by its group's mean output (``groups``:
    each prompt's group, numbered as for :func:`group_means`)."""
    drop = set(map(tuple, ablate))
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    index = torch.as_tensor(inverse)

    def replace(z, hook):
        heads = [h for h in range(model.cfg.n_heads) if (hook.layer(), h) in drop]
        if heads:
            z[:, :, heads] = means[hook.layer()][index][:, : z.shape[1], heads]
        return z

    return [
        (f"blocks.{layer}.attn.hook_z", replace)
        for layer in range(model.cfg.n_layers)
        if any(d[0] == layer for d in drop)
    ]


def all_heads(model) -> list[Head]:
    return [
        (layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)
    ]


@torch.inference_mode()
def knockout_score(
    model,
    tokens: Int[Tensor, "prompt pos"],
    groups: Sequence[int],
    means: dict[int, Tensor],
    ablate: Iterable[Head],
    metric,
) -> float:
    """The metric with the heads of ``ablate`` mean-ablated (a class knocked out)."""
    hooks = ablation_hooks(model, groups, means, ablate)
    return float(metric(model.run_with_hooks(torch.as_tensor(tokens), fwd_hooks=hooks)))


def circuit_score(
    model,
    tokens: Int[Tensor, "prompt pos"],
    groups: Sequence[int],
    means: dict[int, Tensor],
    circuit: Iterable[Head],
    metric,
) -> float:
    """The metric with every head outside ``circuit`` replaced by its group's mean output
    (``groups``: each prompt's group, numbered as for :func:`group_means`)."""
    keep = set(map(tuple, circuit))
    outside = [h for h in all_heads(model) if h not in keep]
    return knockout_score(model, tokens, groups, means, outside, metric)


def faithfulness(
    model,
    tokens: Int[Tensor, "prompt pos"],
    corrupted_tokens: Int[Tensor, "prompt pos"],
    groups: Sequence[int],
    circuit: Iterable[Head],
    metric,
    *,
    random_circuits: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """F(C)/F(M) of ``circuit`` and the mean over ``random_circuits`` random sets of heads of
    the same size (seeded), with F(M) the whole model's metric on ``tokens``."""
    circuit = sorted(set(map(tuple, circuit)))
    means = group_means(model, corrupted_tokens, groups)
    with torch.inference_mode():
        full = float(metric(model(torch.as_tensor(tokens))))
    heads = all_heads(model)
    rng = np.random.default_rng(seed)
    random_scores = [
        circuit_score(
            model,
            tokens,
            groups,
            means,
            [heads[i] for i in rng.choice(len(heads), size=len(circuit), replace=False)],
            metric,
        )  # fmt: skip
        for _ in range(random_circuits)
    ]
    score = circuit_score(model, tokens, groups, means, circuit, metric)
    return {
        "model": full,
        "circuit": score,
        "faithfulness": score / full,
        "random_faithfulness": float(np.mean(random_scores)) / full,
        "random_faithfulness_sd": float(np.std(random_scores)) / abs(full),
        "circuit_size": len(circuit),
    }
