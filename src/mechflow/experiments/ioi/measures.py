"""What the IOI circuit is found from, per head: its direct effect on logit(IO) - logit(S) at
END, and where it attends between the named positions. Computed on the clean prompts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mechflow.analysis.logit_attribution import (
    cache_names,
    components,
    direct_attributions,
)
from mechflow.experiments.ioi.prompts import Prompts

# (query, key) pairs of named positions whose attention tells the IOI classes apart
# (Wang et al. 2022): name movers END -> IO, S-inhibition END -> S2, duplicate-token
# S2 -> S1, induction S2 -> S1+1, previous-token S1+1 -> S1.
SIGNATURES = (("END", "IO"), ("END", "S1"), ("END", "S2"), ("S2", "S1"), ("S2", "S1+1"),
              ("S1+1", "S1"))  # fmt: skip


@torch.inference_mode()
def head_logit_differences(model, prompts: Prompts) -> torch.Tensor:
    """``(layer, head)``: each head's direct attribution to ``logit(IO) - logit(S)`` at END,
    the mean over prompts (exact: with the cached final-norm scale)."""
    tokens = torch.as_tensor(prompts.tokens)
    end = torch.as_tensor(prompts.positions["END"])
    n = int(end.max()) + 1
    _, cache = model.run_with_cache(tokens[:, :n], names_filter=cache_names(model))
    directions = torch.zeros(len(tokens), n, model.cfg.d_model)
    rows = torch.arange(len(tokens))
    io, s = torch.as_tensor(prompts.io), torch.as_tensor(prompts.s)
    directions[rows, end] = model.W_U.T[io] - model.W_U.T[s]
    per = direct_attributions(model, cache, directions).sum(-1).mean(-1)  # component
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for value, c in zip(per, components(model), strict=True):
        if c.kind == "head":
            out[c.layer, c.head] = value
    return out


@torch.inference_mode()
def attention_signatures(model, prompts: Prompts) -> pd.DataFrame:
    """Mean attention of every head from each query position to each key position of
    :data:`SIGNATURES`: columns ``layer, head, query, key, attention``."""
    tokens = torch.as_tensor(prompts.tokens)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    rows = np.arange(len(tokens))
    records = []
    for layer, name in enumerate(names):
        pattern = cache[name]  # batch head query key
        for query, key in SIGNATURES:
            q, k = prompts.positions[query], prompts.positions[key]
            values = pattern[rows, :, q, k].mean(0)  # head
            for head, value in enumerate(values.tolist()):
                records.append((layer, head, query, key, value))
    return pd.DataFrame(records, columns=["layer", "head", "query", "key", "attention"])
