"""What an OthelloGPT's results are held to, as rows ``check, value, threshold, passed, meaning``.

Each check compares against a control, so that a broken pipeline fails it: probes that read
nothing (shuffled labels, or an untrained model called trained) lose the margins, and an edit
that does not act on the board is no better than a random direction of the same norm.
"""

from __future__ import annotations

import pandas as pd

from mechflow.experiments.othello.probing import summarise

CONTROL = "random init"
CHECKS = (
    "top1_legal", "mine_theirs_over_black_white", "trained_over_random_init",
    "shuffled_off_majority", "probe_edit_over_random",
)  # fmt: skip
COLUMNS = ["check", "value", "threshold", "passed", "meaning"]


def probe_summary(accuracy: pd.DataFrame, control_accuracy: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy per (condition, layer, label): the model's probes (trained and shuffled
    labels) and the random-init control's trained probes."""
    control = control_accuracy[control_accuracy["condition"] == "trained"].assign(condition=CONTROL)
    return summarise(pd.concat([accuracy, control], ignore_index=True))


def middle_layers(summary: pd.DataFrame) -> list[int]:
    """Layers with blocks both before and after them (1 .. n_layers - 1)."""
    top = int(summary["layer"].max())
    return list(range(1, top)) if top > 1 else [top]


def _mean(summary: pd.DataFrame, condition: str, label: str, layers: list[int]) -> float:
    rows = summary[(summary["condition"] == condition) & (summary["label"] == label)]
    rows = rows[rows["layer"].isin(layers)]
    if rows.empty:
        raise ValueError(f"no {condition!r} probes of {label!r} at layers {layers}")
    return float(rows["accuracy"].mean())


def othello_checks(
    legal: pd.DataFrame,
    summary: pd.DataFrame,
    interventions: pd.DataFrame,
    *,
    min_top1_legal: float,
    basis_margin: float,
    control_margin: float,
    shuffled_tolerance: float,
    intervention_margin: float,
) -> pd.DataFrame:
    layers = middle_layers(summary)
    top1 = float(legal["top1_legal"].iloc[0])
    relative = _mean(summary, "trained", "relative", layers)
    basis = relative - _mean(summary, "trained", "board", layers)
    control = relative - _mean(summary, CONTROL, "relative", layers)
    shuffled = summary[summary["condition"] == "shuffled labels"]
    if shuffled.empty:
        raise ValueError("no probes on shuffled labels (the control the checks need)")
    off = float((shuffled["accuracy"] - shuffled["baseline"]).abs().max())
    by_scale = interventions.pivot_table(index="scale", columns="condition", values="success")
    gap = by_scale["probe"] - by_scale["random"]
    best = float(gap.idxmax())
    span = f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
    rows = [
        ("top1_legal", top1, min_top1_legal, top1 >= min_top1_legal,
         "the top-1 move is legal on held-out games: the model learned the rules"),
        ("mine_theirs_over_black_white", basis, basis_margin, basis >= basis_margin,
         f"mean probe accuracy at {span}: the board is linear from the side to move, more "
         "than in colours (Nanda 2023)"),
        ("trained_over_random_init", control, control_margin, control >= control_margin,
         f"mine/theirs probes at {span} beat the same probes of the untrained network, which "
         "sees the last move too"),
        ("shuffled_off_majority", off, shuffled_tolerance, off <= shuffled_tolerance,
         "probes on shuffled labels fall to the majority class at every layer (largest gap)"),
        ("probe_edit_over_random", float(gap.max()), intervention_margin,
         float(gap.max()) >= intervention_margin,
         f"at scale {best:g}, edits along the probe make the model's moves those of the "
         "edited board more often than edits along a random direction of the same norm"),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["passed"] = table["passed"].astype(bool)
    assert tuple(table["check"]) == CHECKS
    return table
