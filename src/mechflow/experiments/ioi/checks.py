"""What a model's IOI results are held to, as rows ``check, value, threshold, passed, meaning``.

- ``trained`` (a model trained here on IOI sentences): accuracy on held-out combinations at least
  ``min_accuracy``; at least one name mover found; the found circuit more faithful than random
  circuits of its size.
- ``gpt2`` (GPT-2 small, Wang et al. 2022 and ARENA): a mean logit difference in 2.5-4.0 (ARENA
  2.81, the paper 3.55); two of the name movers 9.6, 9.9, 10.0 among the top three heads by direct
  logit attribution; path patching through the name movers' queries ranks one of the
  S-inhibition heads 7.3, 7.9, 8.6, 8.10 first.
- ``none``: no reference (a pretrained model that is not GPT-2 small): nothing to hold it to.
"""

from __future__ import annotations

import pandas as pd

REFERENCES = ("trained", "gpt2", "none")
GPT2_NAME_MOVERS = {(9, 6), (9, 9), (10, 0)}
GPT2_S_INHIBITION = {(7, 3), (7, 9), (8, 6), (8, 10)}
GPT2_LOGIT_DIFF = (2.5, 4.0)


def _heads(table: pd.DataFrame, by: str, n: int) -> list[tuple[int, int]]:
    top = table.dropna(subset=[by]).sort_values(by, ascending=False, kind="stable").head(n)
    return [(int(r.layer), int(r.head)) for r in top.itertuples()]


def ioi_checks(
    accuracy: pd.DataFrame,
    classes: pd.DataFrame,
    faithfulness: pd.DataFrame,
    *,
    reference: str,
    min_accuracy: float = 0.95,
) -> pd.DataFrame:
    if reference not in REFERENCES:
        raise ValueError(f"reference {reference!r}; allowed: {list(REFERENCES)}")
    combos = accuracy.set_index("split").loc["combinations"]
    rows = []
    if reference == "trained":
        movers = int((classes["class"] == "name mover").sum())
        f = faithfulness.iloc[0]
        rows = [
            ("heldout_combination_accuracy", combos["accuracy"], min_accuracy,
             combos["accuracy"] >= min_accuracy, "solves IOI on combinations never trained on"),
            ("name_movers", movers, 1, movers >= 1, "heads that move a name to END, found"),
            ("faithfulness_over_random", f["faithfulness"] - f["random_faithfulness"], 0.0,
             f["faithfulness"] > f["random_faithfulness"],
             "the found circuit keeps more of the logit difference than random ones"),
        ]  # fmt: skip
    elif reference == "gpt2":
        low, high = GPT2_LOGIT_DIFF
        diff = combos["logit_diff"]
        top_dla = _heads(classes, "dla_diff", 3)
        movers_in_top = len(GPT2_NAME_MOVERS & set(top_dla))
        first = _heads(classes, "via_movers_q", 1)
        rows = [
            ("logit_diff_in_range", diff, low, low <= diff <= high,
             f"mean logit difference within {low}-{high} (ARENA 2.81, the paper 3.55)"),
            ("name_movers_in_top3_dla", movers_in_top, 2, movers_in_top >= 2,
             "two of 9.6, 9.9, 10.0 among the top three heads by direct logit attribution"),
            ("s_inhibition_ranked_first", float(bool(first and first[0] in GPT2_S_INHIBITION)),
             1.0, bool(first and first[0] in GPT2_S_INHIBITION),
             "path patching via the name movers' queries ranks 7.3, 7.9, 8.6 or 8.10 first"),
        ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["check", "value", "threshold", "passed", "meaning"])
    table["passed"] = table["passed"].astype(bool)
    return table
