"""Linear probes of OthelloGPT's residual stream: the board in two bases, legal moves, flips.

Li et al. 2023 found no linear board in colours (black/white/empty) and needed MLP probes;
Nanda 2023 found it linear relative to the side to move (mine/theirs/empty). Both bases are
probed here at every layer, with the same rows, split and optimiser, so the comparison is the
basis alone. Two controls say what "linear" is worth: the same probes on shuffled labels (no
information: they must fall to the majority class) and on a randomly initialised model (its
residual stream still holds the last move and its position, so it reads part of the board).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mechflow.experiments.othello.labels import IGNORE

# one batched optimisation per label (every layer x square at once), each saved on its own
LABELS = ("relative", "board", "legal", "flipped")
BASIS = {"relative": "mine/theirs/empty", "board": "black/white/empty"}


def probe_hooks(n_layers: int) -> list[str]:
    """The residual stream before the first block and after each: "layer l" read l blocks."""
    return ["blocks.0.hook_resid_pre", *(f"blocks.{i}.hook_resid_post" for i in range(n_layers))]


def layer_of(hook: str) -> int:
    """The blocks a probe hook has read (``blocks.0.hook_resid_pre``: 0)."""
    parts = hook.split(".")
    if (
        len(parts) != 3
        or parts[0] != "blocks"
        or parts[2] not in ("hook_resid_pre", "hook_resid_post")
    ):
        raise ValueError(f"{hook!r} is not a residual-stream hook blocks.<i>.hook_resid_pre/post")
    return int(parts[1]) + (parts[2] == "hook_resid_post")


def target_name(label: str, square: int) -> str:
    return f"{label}.{square}"


def sweep_labels(
    arrays: dict[str, np.ndarray], names: Sequence[str], mask: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """``(rows, targets)`` labels of the given label arrays, one target per (label, square),
    rows in (game, position) order; rows outside ``mask`` are ``IGNORE``. A square whose label
    never varies on those rows (a centre square is never legal) gets no probe: it has nothing
    to find, and its loss would fall forever, keeping the batched sweep from stopping."""
    blocks, targets = [], []
    for name in names:
        values = np.asarray(arrays[name]).astype(np.int64)  # game pos square
        values = np.where(mask[..., None], values, IGNORE).reshape(-1, values.shape[-1])
        labelled = values[mask.reshape(-1)]
        varies = (labelled != labelled[:1]).any(0)
        blocks.append(values[:, varies])
        targets += [target_name(name, int(s)) for s in np.flatnonzero(varies)]
    return np.concatenate(blocks, axis=1), targets


def shuffle_rows(labels: np.ndarray, seed: int) -> np.ndarray:
    """The labelled rows' labels permuted among them (whole rows, so each target keeps its class
    counts): a control with no information, which must fall to the majority class."""
    out = labels.copy()
    rows = np.flatnonzero((labels != IGNORE).any(1))
    out[rows] = labels[np.random.default_rng(seed).permutation(rows)]
    return out


def accuracy_table(table: pd.DataFrame, condition: str) -> pd.DataFrame:
    """The probe trainer's table, tidy: one row per (layer, label, square)."""
    label, square = zip(*(t.rsplit(".", 1) for t in table["target"]), strict=True)
    return pd.DataFrame(
        {
            "condition": condition,
            "hook": table["hook"],
            "layer": [layer_of(h) for h in table["hook"]],
            "label": label,
            "square": np.asarray(square, dtype=int),
            "accuracy": table["validation_accuracy"],
            "baseline": table["baseline_accuracy"],
            "train_accuracy": table["train_accuracy"],
            "epochs": table["epochs"],
            "n_validation": table["n_validation"],
        }
    )


def summarise(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy over squares per (model, condition, layer, label), with the mean majority
    baseline; squares whose label never varies (a centre square is never empty) count too."""
    keys = [k for k in ("model", "condition", "layer", "label") if k in accuracy]
    out = accuracy.groupby(keys, sort=False).agg(
        accuracy=("accuracy", "mean"),
        baseline=("baseline", "mean"),
        worst_square=("accuracy", "min"),
        probes=("accuracy", "size"),
    )
    return out.reset_index()


def example_boards(results, store, arrays, mask, hooks, *, n_positions: int) -> pd.DataFrame:
    """The board probes' predictions (``results``: label -> its probe result) on the first
    held-out game, at ``n_positions`` positions spread over its probed moves, at every layer,
    beside the true board."""
    import torch

    from mechflow.probes.linear import predict_proba

    n_pos = mask.shape[1]
    game = int(np.flatnonzero(results["relative"].validation)[0] // n_pos)
    positions = np.flatnonzero(mask[game])
    positions = positions[np.linspace(0, len(positions) - 1, n_positions).round().astype(int)]
    positions = np.unique(positions)
    acts = np.stack([store.numpy(h, slice(game, game + 1))[0, positions] for h in hooks])
    acts = torch.from_numpy(acts.astype(np.float32))
    rel_p, col_p = (predict_proba(results[k].probes, acts).numpy() for k in ("relative", "board"))
    n_sq = arrays["relative"].shape[-1]
    rows = []
    for h, hook in enumerate(hooks):
        for i, p in enumerate(positions):
            for s in range(n_sq):
                rel, col = rel_p[h, i, s], col_p[h, i, s]
                rows.append({
                    "game": game, "position": int(p), "layer": layer_of(hook), "square": s,
                    "relative": int(arrays["relative"][game, p, s]),
                    "board": int(arrays["board"][game, p, s]),
                    "p_empty": rel[0], "p_mine": rel[1], "p_theirs": rel[2],
                    "p_black": col[1], "p_white": col[2],
                })  # fmt: skip
    return pd.DataFrame(rows)
