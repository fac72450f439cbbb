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


def logit_difference(prompts: Prompts, reduce: str = "mean"):
    """The IOI metric: logit(IO) - logit(S) at END (mean over prompts, or per prompt)."""
    from mechflow.patching import LogitDifference

    return LogitDifference(
        torch.as_tensor(prompts.positions["END"]), torch.as_tensor(prompts.io),
        torch.as_tensor(prompts.s), reduce=reduce,
    )  # fmt: skip


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


def classify_heads(
    model,
    prompts: Prompts,
    corrupted_tokens,
    *,
    attention_threshold: float = 0.4,
    share: float = 0.3,
    batch_size: int = 64,
) -> dict[str, list[tuple[int, int]]]:
    """The IOI classes of Wang et al. (2022), found by measurement, never by index.

    - **name movers**: direct attribution to logit(IO) - logit(S) at least ``share`` of the
      largest, attending END -> IO more than to either S; **negative name movers** the same
      with the sign turned;
    - **S-inhibition**: path patching (ABC into clean) through the name movers' queries moves
      the logit difference by at least ``share`` of the largest such move, attending END -> S2
      more than END -> IO;
    - **duplicate-token** / **induction**: attention S2 -> S1 / S2 -> S1+1 of at least
      ``attention_threshold``, and path patching through the S-inhibition heads' keys and
      values moves the logit difference by at least ``share`` of the largest such move;
    - **other**: heads whose path to the logits moves it by at least ``share`` of the largest
      move but fit no class above (a small model may solve IOI another way).
    """
    import torch

    from mechflow.patching import Receiver, normalised, path_patching

    clean = torch.as_tensor(prompts.tokens)
    corrupted = torch.as_tensor(corrupted_tokens)
    metric = logit_difference(prompts)
    with torch.inference_mode():
        clean_score, corrupted_score = float(metric(model(clean))), float(metric(model(corrupted)))

    def moved(receivers) -> torch.Tensor:  # |change| of the normalised difference, per sender
        out = path_patching(model, clean, corrupted, metric, receivers=receivers,
                            batch_size=batch_size)  # fmt: skip
        return (1 - normalised(out, clean_score, corrupted_score)).abs()

    def strong(values: torch.Tensor) -> torch.Tensor:
        top = float(values.max())
        return values >= share * top if top > 0 else torch.zeros_like(values, dtype=torch.bool)

    att = attention_signatures(model, prompts).set_index(["layer", "head", "query", "key"])
    a = att["attention"]

    def attends(layer, head, query, key) -> float:
        return float(a[layer, head, query, key])

    heads = [
        (layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)
    ]
    dla = head_logit_differences(model, prompts)

    def to_io(h) -> bool:
        return attends(*h, "END", "IO") > max(attends(*h, "END", "S1"), attends(*h, "END", "S2"))

    positive, negative = strong(dla), strong(-dla)
    classes: dict[str, list[tuple[int, int]]] = {
        "name mover": [h for h in heads if positive[h] and to_io(h)],
        "negative name mover": [h for h in heads if negative[h] and to_io(h)],
    }
    movers = classes["name mover"] + classes["negative name mover"]
    classes["S-inhibition"] = []
    if movers:
        through = strong(moved([Receiver(layer, head, "q") for layer, head in movers]))
        classes["S-inhibition"] = [
            h for h in heads if h not in movers and through[h]
            and attends(*h, "END", "S2") > attends(*h, "END", "IO")
        ]  # fmt: skip
    inhibitors = classes["S-inhibition"]
    classes["duplicate-token"], classes["induction"] = [], []
    if inhibitors:
        receivers = [Receiver(layer, head, x) for layer, head in inhibitors for x in "kv"]
        through = strong(moved(receivers))
        for name, key in (("duplicate-token", "S1"), ("induction", "S1+1")):
            classes[name] = [
                h for h in heads if through[h]
                and attends(*h, "S2", key) >= attention_threshold
            ]  # fmt: skip
    found = {h for members in classes.values() for h in members}
    direct = strong(moved("resid_final"))
    classes["other"] = [h for h in heads if direct[h] and h not in found]
    return classes
