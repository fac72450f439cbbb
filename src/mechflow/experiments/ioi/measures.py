"""What the IOI circuit is found from, per head: its direct effect on logit(IO) - logit(S) at
END, and where it attends between the named positions. Computed on the clean prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
Head = tuple[int, int]


def attention_column(query: str, key: str) -> str:
    """The table column of one signature: ``("S1+1", "S1")`` -> ``att_s1p1_s1``."""
    return "att_" + "_".join(p.lower().replace("+1", "p1") for p in (query, key))


def logit_difference(prompts: Prompts, reduce: str = "mean"):
    """The IOI metric: logit(IO) - logit(S) at END (mean over prompts, or per prompt)."""
    from mechflow.patching import LogitDifference

    return LogitDifference(
        torch.as_tensor(prompts.positions["END"]), torch.as_tensor(prompts.io),
        torch.as_tensor(prompts.s), reduce=reduce,
    )  # fmt: skip


@torch.inference_mode()
def head_logit_attributions(
    model, prompts: Prompts, name_ids: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """``{"IO", "S", "IO-S"}`` -> ``(layer, head)``: each head's direct attribution at END to
    ``logit(IO)`` and to ``logit(S)``, each measured against the mean logit of ``name_ids``
    (default: every IO and S of the prompts), and to their difference; means over prompts,
    exact (with the cached final-norm scale).

    A head that copies both names raises IO and S alike: it moves names, yet its share of the
    difference is zero. The three together tell movers, suppressors and inhibitors apart."""
    tokens = torch.as_tensor(prompts.tokens)
    end = torch.as_tensor(prompts.positions["END"])
    n = int(end.max()) + 1
    _, cache = model.run_with_cache(tokens[:, :n], names_filter=cache_names(model))
    io, s = torch.as_tensor(prompts.io), torch.as_tensor(prompts.s)
    if name_ids is None:
        name_ids = torch.unique(torch.cat([io, s]))
    baseline = model.W_U[:, torch.as_tensor(name_ids)].mean(-1)  # d_model
    rows = torch.arange(len(tokens))
    heads = [i for i, c in enumerate(components(model)) if c.kind == "head"]
    out = {}
    for key, ids in (("IO", io), ("S", s)):
        directions = torch.zeros(len(tokens), n, model.cfg.d_model)
        directions[rows, end] = model.W_U.T[ids] - baseline
        per = direct_attributions(model, cache, directions).sum(-1).mean(-1)  # component
        out[key] = per[heads].reshape(model.cfg.n_layers, model.cfg.n_heads)
    out["IO-S"] = out["IO"] - out["S"]
    return out


def head_logit_differences(model, prompts: Prompts) -> torch.Tensor:
    """``(layer, head)``: each head's direct attribution to ``logit(IO) - logit(S)`` at END."""
    return head_logit_attributions(model, prompts)["IO-S"]


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


CLASSES = (
    "name mover", "negative name mover", "S suppression", "backup name mover", "S-inhibition",
    "duplicate-token", "induction", "previous-token", "other",
)  # fmt: skip


@dataclass
class Classification:
    """The IOI classes found (``classes``: class -> heads, every class listed) and what they
    were found from (``heads``: one row per head, its class and every measurement)."""

    classes: dict[str, list[Head]]
    heads: pd.DataFrame


def alignment_groups(prompts: Prompts) -> np.ndarray:
    """Prompts whose positions line up (one template and prefix): the mean-ablation groups."""
    return prompts.template * 1000 + prompts.prefix


def classify_heads(
    model,
    prompts: Prompts,
    corrupted_tokens,
    *,
    attention_threshold: float = 0.3,
    share: float = 0.3,
    min_effect: float = 0.05,
    batch_size: int = 64,
    name_ids: Sequence[int] | None = None,
) -> Classification:
    """The IOI classes of Wang et al. (2022), found by measurement, never by index.

    Direct effects are the heads' attributions at END to logit(IO) and logit(S) (against the
    mean name logit), "strong" when at least ``share`` of the largest on the same logit; path
    effects are changes of
    the normalised logit difference when a head's path is corrupted (ABC into clean), strong when
    at least ``share`` of the largest and ``min_effect``. A head takes the first class it fits:

    - **name mover**: raises logit(IO) directly, attending END -> IO >= ``attention_threshold``
      (a head that copies both names moves names too; its ``dla_diff`` tells it apart);
    - **negative name mover**: lowers logit(IO) directly, attending END -> IO;
    - **S suppression**: lowers logit(S) directly, attending END -> S1 or S2 (not a class of the
      paper; a small model can solve IOI by copying both names and suppressing S);
    - **backup name mover**: with the name movers mean-ablated, raises logit(IO) by a strong
      amount more than before, then attending END -> IO;
    - **S-inhibition**: strong through the (backup) name movers' queries, attending END -> S2
      more than END -> IO;
    - **duplicate-token** / **induction**: strong through the S-inhibition and S-suppression
      heads' queries, keys and values, attending S2 -> S1 / S2 -> S1+1;
    - **previous-token**: strong through the induction heads' keys, attending S1+1 -> S1;
    - **other**: strong on its path to the logits, fitting no class above.
    """
    from mechflow.patching import Receiver, normalised, path_patching
    from mechflow.patching.circuits import ablation_hooks, all_heads, group_means

    clean = torch.as_tensor(prompts.tokens)
    corrupted = torch.as_tensor(corrupted_tokens)
    metric = logit_difference(prompts)
    with torch.inference_mode():
        clean_score, corrupted_score = float(metric(model(clean))), float(metric(model(corrupted)))
    heads = all_heads(model)
    table = pd.DataFrame(heads, columns=["layer", "head"])
    found: dict[Head, str] = {}

    def moved(receivers) -> torch.Tensor:  # |change| of the normalised difference, per sender
        out = path_patching(model, clean, corrupted, metric, receivers=receivers,
                            batch_size=batch_size)  # fmt: skip
        return (1 - normalised(out, clean_score, corrupted_score)).abs().nan_to_num(0.0)

    def strong_path(values: torch.Tensor) -> torch.Tensor:
        return values >= max(share * float(values.max()), min_effect)

    def column(name: str, values: torch.Tensor) -> None:
        table[name] = [float(values[h]) for h in heads]

    def assign(name: str, members) -> None:
        for h in members:
            found.setdefault(h, name)

    dla = head_logit_attributions(model, prompts, name_ids)
    for key, name in (("IO", "dla_io"), ("S", "dla_s"), ("IO-S", "dla_diff")):
        column(name, dla[key])
    # effects on logit(IO) are compared with the largest on it, those on logit(S) with S's
    top = {key: float(dla[key].abs().max()) for key in ("IO", "S")}
    att = attention_signatures(model, prompts).set_index(["layer", "head", "query", "key"])
    for (query, key), part in att.groupby(["query", "key"])["attention"]:
        table[attention_column(query, key)] = part.to_numpy()

    def attends(h, query, key, signatures=att) -> float:
        return float(signatures["attention"][h[0], h[1], query, key])

    def direct(values: torch.Tensor, h, of: str) -> bool:
        return top[of] > 0 and float(values[h]) >= share * top[of]

    assign("name mover", [h for h in heads if direct(dla["IO"], h, "IO")
                          and attends(h, "END", "IO") >= attention_threshold])  # fmt: skip
    assign("negative name mover", [h for h in heads if direct(-dla["IO"], h, "IO")
                                   and attends(h, "END", "IO") >= attention_threshold])  # fmt: skip
    assign("S suppression", [
        h for h in heads if direct(-dla["S"], h, "S")
        and max(attends(h, "END", "S1"), attends(h, "END", "S2")) >= attention_threshold
    ])  # fmt: skip

    movers = [h for h, c in found.items() if c == "name mover"]
    table["dla_io_movers_ablated"] = np.nan
    if movers:
        means = group_means(model, corrupted, alignment_groups(prompts))
        with model.hooks(fwd_hooks=ablation_hooks(model, alignment_groups(prompts), means, movers)):
            knocked = head_logit_attributions(model, prompts, name_ids)["IO"]
            knocked_att = attention_signatures(model, prompts).set_index(
                ["layer", "head", "query", "key"]
            )
        column("dla_io_movers_ablated", knocked)
        assign("backup name mover", [
            h for h in heads if h not in found and direct(knocked - dla["IO"], h, "IO")
            and attends(h, "END", "IO", knocked_att) >= attention_threshold
        ])  # fmt: skip

    def through(name: str, receivers: list) -> torch.Tensor | None:
        if not receivers:
            table[name] = np.nan
            return None
        values = moved(receivers)
        column(name, values)
        return strong_path(values)

    readers = [h for h, c in found.items() if c in ("name mover", "backup name mover")]
    via_q = through("via_movers_q", [Receiver(*h, "q") for h in readers])
    if via_q is not None:
        assign("S-inhibition", [
            h for h in heads if h not in found and via_q[h]
            and attends(h, "END", "S2") > attends(h, "END", "IO")
        ])  # fmt: skip
    inhibitors = [h for h, c in found.items() if c in ("S-inhibition", "S suppression")]
    via_inhibitors = through(
        "via_inhibitors_qkv", [Receiver(*h, x) for h in inhibitors for x in "qkv"]
    )
    if via_inhibitors is not None:
        for name, key in (("duplicate-token", "S1"), ("induction", "S1+1")):
            assign(name, [
                h for h in heads if h not in found and via_inhibitors[h]
                and attends(h, "S2", key) >= attention_threshold
            ])  # fmt: skip
    inductions = [h for h, c in found.items() if c == "induction"]
    via_induction = through("via_induction_k", [Receiver(*h, "k") for h in inductions])
    if via_induction is not None:
        assign("previous-token", [
            h for h in heads if h not in found and via_induction[h]
            and attends(h, "S1+1", "S1") >= attention_threshold
        ])  # fmt: skip
    to_logits = through("to_logits", "resid_final")
    assign("other", [h for h in heads if to_logits[h]])
    table["class"] = [found.get(h, "") for h in heads]
    classes = {name: sorted(h for h, c in found.items() if c == name) for name in CLASSES}
    return Classification(classes, table)
