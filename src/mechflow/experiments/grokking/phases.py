"""The three phases of grokking (memorisation, circuit formation, cleanup), read off the
progress measures; pandas only, so the threshold checks need no torch."""

from __future__ import annotations

import pandas as pd


def first_epoch(wide: pd.DataFrame, mask: pd.Series) -> float:
    hits = wide.index[mask.to_numpy()]
    return float(hits[0]) if len(hits) else float("nan")


def phase_boundaries(wide: pd.DataFrame) -> dict[str, float]:
    """Epochs that end each phase, read from the progress measures (``wide``: index epoch).

    - memorised: first checkpoint with every training pair right;
    - cleanup_start: the test loss has fallen to half its peak (it starts to generalise);
    - grokked: first checkpoint with test accuracy >= 99%.
    NaN where the run never gets there.
    """
    wide = wide.sort_index()
    memorised = first_epoch(wide, wide["train_accuracy"] >= 1.0)
    peak_epoch = wide["test_loss"].idxmax()
    after_peak = wide.index >= peak_epoch
    falling = pd.Series(
        after_peak & (wide["test_loss"] <= 0.5 * wide["test_loss"].max()).to_numpy(),
        index=wide.index,
    )
    return {
        "memorised": memorised,
        "cleanup_start": first_epoch(wide, falling),
        "grokked": first_epoch(wide, wide["test_accuracy"] >= 0.99),
    }


def phase_table(bounds: dict[str, float], last_epoch: int) -> pd.DataFrame:
    """Memorisation, circuit formation, cleanup as [start, end) epochs (NaN if not reached)."""
    edges = [0.0, bounds["memorised"], bounds["cleanup_start"], bounds["grokked"]]
    names = ["memorisation", "circuit formation", "cleanup"]
    rows = []
    for name, start, end in zip(names, edges[:-1], edges[1:], strict=True):
        rows.append({"phase": name, "start_epoch": start, "end_epoch": end})
    df = pd.DataFrame(rows)
    df.attrs["last_epoch"] = last_epoch
    return df
