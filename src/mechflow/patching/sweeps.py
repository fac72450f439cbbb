"""A patching sweep split into shards (one job each, e.g. one SLURM job per shard) and gathered
back into one table that equals the unsharded sweep's.

A shard owns a contiguous block of layers; its table records ``shard`` and ``n_shards`` on every
row, so a gather can tell a complete set of shards from a partial or mixed one. Shard files are
written atomically (``artifacts.write_table``): a killed shard leaves no file, and a gather of
the remaining ones refuses to run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def shard_layers(n_layers: int, n_shards: int, shard: int) -> list[int]:
    """The layers of shard ``shard`` of ``n_shards`` (contiguous blocks, sizes differing by
    at most one)."""
    if not 1 <= n_shards <= n_layers:
        raise ValueError(f"shards: {n_shards}; allowed 1 to {n_layers} (the model's layers)")
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} of {n_shards}: allowed 0 to {n_shards - 1}")
    return [int(x) for x in np.array_split(np.arange(n_layers), n_shards)[shard]]


def label_shard(table: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    return table.assign(shard=shard, n_shards=n_shards)


def gather_shards(tables: Sequence[pd.DataFrame], sources: Sequence[str]) -> pd.DataFrame:
    """One table from every shard of a sweep, in layer order, the shard columns dropped;
    refuses a missing, repeated or foreign shard, naming the file."""
    if not tables:
        raise ValueError("no shard tables to gather")
    labels = []
    for table, source in zip(tables, sources, strict=True):
        if not {"shard", "n_shards"} <= set(table.columns) or table.empty:
            raise ValueError(f"{source}: not a sweep shard (no shard/n_shards rows)")
        if table["shard"].nunique() != 1 or table["n_shards"].nunique() != 1:
            raise ValueError(f"{source}: rows of several shards")
        labels.append((int(table["shard"].iloc[0]), int(table["n_shards"].iloc[0])))
    counts = {n for _, n in labels}
    if len(counts) != 1:
        raise ValueError(f"shards of different sweeps: n_shards {sorted(counts)} in {sources}")
    seen: dict[int, str] = {}
    for (shard, _), source in zip(labels, sources, strict=True):
        if shard in seen:
            raise ValueError(f"{source}: shard {shard} again (also in {seen[shard]})")
        seen[shard] = source
    (n,) = counts
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise ValueError(f"shards {missing} of {n} are missing; got {list(sources)}")
    out = pd.concat(tables, ignore_index=True).drop(columns=["shard", "n_shards"])
    keys = [c for c in ("kind", "layer", "head", "pos") if c in out.columns]
    return out.sort_values(keys, kind="stable").reset_index(drop=True)
