"""The IOI patching sweeps of one block of layers (a shard), as one tidy table.

- ``resid_pre``, ``attn_out``, ``mlp_out`` by layer x position, on the aligned split (every
  position the same word): where the IO/S information sits and moves (denoising: the clean
  activation into the ABC run; 1 = the clean logit difference restored);
- ``z`` by layer x head, on the combinations: which head outputs carry it (denoising);
- ``path_logits`` by layer x head, on the combinations: each head's direct path to the logits
  corrupted in the clean run (noising; 1 = no effect).

Values are normalised with the clean and ABC logit differences (``patching.normalised``).
Columns: ``kind, layer, head, pos, position, value`` (``head``/``pos`` -1 where they do not
apply).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from mechflow.experiments.ioi.measures import logit_difference
from mechflow.experiments.ioi.prompt_set import PromptSet

POSITION_KINDS = ("resid_pre", "attn_out", "mlp_out")
HEAD_KINDS = ("z", "path_logits")


def _scores(model, clean, corrupted, metric) -> tuple[float, float]:
    with torch.inference_mode():
        return float(metric(model(clean))), float(metric(model(corrupted)))


def ioi_sweep(
    model, prompt_set: PromptSet, layers: Sequence[int], *, batch_size: int = 64
) -> pd.DataFrame:
    """Every sweep of the module docstring, restricted to ``layers``."""
    from mechflow.patching import activation_patching, normalised, path_patching

    records = []
    aligned = prompt_set.prompts["aligned"]
    clean = torch.as_tensor(aligned.tokens)
    corrupted = torch.as_tensor(prompt_set.corrupted["aligned"])
    n_pos = int(aligned.positions["END"].max()) + 1
    clean, corrupted = clean[:, :n_pos], corrupted[:, :n_pos]
    metric = logit_difference(aligned)
    scores = _scores(model, clean, corrupted, metric)
    kinds = [k for k in POSITION_KINDS if not (k == "mlp_out" and model.cfg.attn_only)]
    for kind in kinds:
        out = activation_patching(
            model, clean, corrupted, kind, metric, layers=layers, batch_size=batch_size
        )
        for row, layer in enumerate(layers):
            for pos, value in enumerate(normalised(out[row], *scores).tolist()):
                records.append((kind, layer, -1, pos, prompt_set.position_labels[pos], value))
    combos = prompt_set.prompts["combinations"]
    clean = torch.as_tensor(combos.tokens)
    corrupted = torch.as_tensor(prompt_set.corrupted["combinations"])
    metric = logit_difference(combos)
    scores = _scores(model, clean, corrupted, metric)
    z = activation_patching(model, clean, corrupted, "z", metric, layers=layers,
                            batch_size=batch_size)  # fmt: skip
    senders = [(layer, head) for layer in layers for head in range(model.cfg.n_heads)]
    path = path_patching(model, clean, corrupted, metric, senders=senders,
                         batch_size=batch_size)  # fmt: skip
    for row, layer in enumerate(layers):
        for head in range(model.cfg.n_heads):
            records.append(("z", layer, head, -1, "", float(normalised(z[row, head], *scores))))
            value = float(normalised(path[layer, head], *scores))
            records.append(("path_logits", layer, head, -1, "", value))
    return pd.DataFrame(records, columns=["kind", "layer", "head", "pos", "position", "value"])
