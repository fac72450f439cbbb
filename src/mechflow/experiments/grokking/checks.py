"""The paper's claims as thresholds on a run's tables: a broken pipeline or a run that never
grokked fails them.

Each check returns a row: check, value, threshold, passed, and what it means.
"""

from __future__ import annotations

import math

import pandas as pd

from mechflow.experiments.grokking.phases import first_epoch

# Defaults: "train accuracy reaches 100% well before test accuracy passes 99%" is read as
# "at most half the epochs"; "a small set of key frequencies" as at most 8 of them.
MAX_MEMORISE_RATIO = 0.5
MAX_KEY_FREQUENCIES = 8
MIN_EMBEDDING_SHARE = 0.5
RESTRICTED_LEVEL = 1.0  # nats: "has fallen" means below this (most pairs right)
MIN_EXCLUDED_RISE = 2.0  # excluded loss must at least double from its lowest point...
MIN_EXCLUDED_LOSS = 1.0  # ...and exceed 1 nat, where the train loss is <= MAX_TRAIN_LOSS
MAX_TRAIN_LOSS = 0.1


def _row(check: str, value: float, threshold: float, passed: bool, meaning: str) -> dict:
    ok = bool(passed) and not (isinstance(value, float) and math.isnan(value))
    return {
        "check": check,
        "value": value,
        "threshold": threshold,
        "passed": ok,
        "meaning": meaning,
    }


def grokking_checks(
    progress: pd.DataFrame, phases: pd.DataFrame, keys: pd.DataFrame
) -> pd.DataFrame:
    """progress: long (epoch, metric, value); phases: phase/start_epoch/end_epoch; keys: key table."""
    wide = progress.pivot(index="epoch", columns="metric", values="value").sort_index()
    ends = phases.set_index("phase")["end_epoch"]
    memorised, grokked = float(ends["memorisation"]), float(ends["cleanup"])
    rows = [
        _row(
            "memorised_well_before_grokking",
            memorised / grokked if grokked > 0 else float("nan"),
            MAX_MEMORISE_RATIO,
            memorised / grokked <= MAX_MEMORISE_RATIO if grokked > 0 else False,
            "epoch of 100% train accuracy / epoch of 99% test accuracy",
        ),
        _row(
            "few_key_frequencies",
            float(len(keys)),
            MAX_KEY_FREQUENCIES,
            1 <= len(keys) <= MAX_KEY_FREQUENCIES,
            "number of key frequencies read off the neurons (at least one)",
        ),
        _row(
            "embedding_on_key_frequencies",
            float(keys["embedding_share"].sum()) if len(keys) else 0.0,
            MIN_EMBEDDING_SHARE,
            float(keys["embedding_share"].sum()) >= MIN_EMBEDDING_SHARE if len(keys) else False,
            "share of the embedding's non-constant squared norm on the key frequencies",
        ),
    ]
    restricted_at = first_epoch(wide, wide["restricted_loss"] < RESTRICTED_LEVEL)
    test_at = first_epoch(wide, wide["test_loss"] < RESTRICTED_LEVEL)
    rows.append(
        _row(
            "restricted_loss_falls_first",
            restricted_at,
            test_at,
            restricted_at < test_at,
            f"first epoch restricted loss < {RESTRICTED_LEVEL} nats (threshold: same for test loss)",
        )
    )
    # The excluded loss must climb (at least MIN_EXCLUDED_RISE x its lowest earlier value, and
    # above MIN_EXCLUDED_LOSS) to a peak reached while the train loss is low, before grokking:
    # memorisation alone would keep it as low as the train loss.
    low_train = (wide.index <= grokked) & (wide["train_loss"] <= MAX_TRAIN_LOSS).to_numpy()
    if low_train.any():
        peak_epoch = wide.loc[low_train, "excluded_loss"].idxmax()
        peak = float(wide.loc[peak_epoch, "excluded_loss"])
        trough = float(wide.loc[:peak_epoch, "excluded_loss"].min())
    else:
        peak, trough = float("nan"), float("nan")
    needed = max(MIN_EXCLUDED_LOSS, MIN_EXCLUDED_RISE * trough)
    rows.append(
        _row(
            "excluded_loss_rises",
            peak,
            needed,
            peak >= needed,
            f"peak excluded loss before grokking where train loss <= {MAX_TRAIN_LOSS} "
            f"(threshold: {MIN_EXCLUDED_RISE}x its lowest earlier value, >= {MIN_EXCLUDED_LOSS} nat)",
        )
    )
    return pd.DataFrame(rows)
