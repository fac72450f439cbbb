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


@torch.inference_mode()
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
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    index = torch.as_tensor(inverse)

    def ablate(z, hook):
        layer = hook.layer()
        drop = [h for h in range(model.cfg.n_heads) if (layer, h) not in keep]
        if drop:
            z[:, :, drop] = means[layer][index][:, : z.shape[1], drop]
        return z

    hooks = [(f"blocks.{layer}.attn.hook_z", ablate) for layer in range(model.cfg.n_layers)]
    return float(metric(model.run_with_hooks(torch.as_tensor(tokens), fwd_hooks=hooks)))


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
    heads = [
        (layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)
    ]
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
