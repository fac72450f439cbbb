"""The IOI experiment's fixed evaluation sample: every analysis of a model reads the same prompts.

Three splits, each with its ABC corruption (same template, prefix, place and object, three
other names):

- ``combinations``: the training templates with combinations of template, prefix, names, place
  and object that are not training rows (any prompt equal to one is drawn again); the
  circuit is found on these;
- ``templates``: the held-out templates (accuracy on sentences never seen, reported apart);
- ``aligned``: one template, one prefix and ABBA order, so that every position means the same word in
  every prompt: the layer x position patching sweeps read these.

Saved as one ``.npz`` (no pickles), written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mechflow.artifacts import atomic_path
from mechflow.experiments.ioi.prompts import (
    POSITIONS,
    Prompts,
    TextVocabulary,
    Vocabulary,
    corrupt_abc,
    make_prompts,
    training_templates,
    word_lists,
)

SPLITS = ("combinations", "templates", "aligned")
_FIELDS = ("io", "s", "template", "prefix", "order", "place", "object")


@dataclass(frozen=True)
class PromptSet:
    """Prompts of every split, the ABC tokens of each, and the aligned split's position labels."""

    prompts: dict[str, Prompts]
    corrupted: dict[str, np.ndarray]
    position_labels: list[str]
    name_ids: np.ndarray  # every name's token id: the baseline of the direct attributions


def position_labels(prompts: Prompts, vocabulary) -> list[str]:
    """Labels of the aligned split's positions: the named ones (IO, S1, S1+1, S2, END) by name,
    the others by the word of the first prompt there."""
    first = prompts.tokens[0]
    labels = [
        vocabulary.decode([t]).strip() or "·" for t in first[: prompts.positions["END"][0] + 1]
    ]
    for name in POSITIONS:
        labels[int(prompts.positions[name][0])] = name
    return labels


def build_prompt_set(
    spec: dict,
    vocabulary: Vocabulary | TextVocabulary,
    *,
    n: int,
    n_aligned: int,
    seed: int,
    seq_len: int | None = None,
    training_rows: np.ndarray | None = None,
) -> PromptSet:
    """The sample of an ``ioi`` dataset ``spec`` (its word lists and held-out templates), drawn
    with ``seed``; ``training_rows`` (prompt + answer rows) are never drawn as combinations."""
    lists = word_lists(spec)
    train_ids = training_templates(len(lists["templates"]), spec.get("held_out_templates", 0))
    held_out = [i for i in range(len(lists["templates"])) if i not in train_ids]
    seen, width = set(), 0
    if training_rows is not None:
        rows = np.asarray(training_rows, dtype=np.int32)
        seen, width = {row.tobytes() for row in rows}, rows.shape[1]
    prompts, corrupted = {}, {}
    draws = {
        "combinations": {"template_ids": train_ids},
        "templates": {"template_ids": held_out},
        "aligned": {"template_ids": [train_ids[0]], "prefix_ids": [0]},
    }
    for k, (split, pick) in enumerate(draws.items()):
        if not pick["template_ids"]:
            continue
        count = n_aligned if split == "aligned" else n
        drawn = make_prompts(
            3 * count + 8, seed=seed + k, vocabulary=vocabulary, seq_len=seq_len, **lists, **pick
        )
        keep = _unseen(drawn, seen, width, vocabulary.pad_id)
        if split == "aligned":  # ABBA only: IO and S1 at the same positions in every prompt
            keep = keep[drawn.order[keep] == "ABBA"]
        keep = keep[:count]
        if len(keep) < count:
            raise ValueError(f"{split}: fewer than {count} prompts outside the training rows")
        chosen = select_prompts(drawn, keep)
        prompts[split] = chosen
        corrupted[split] = corrupt_abc(
            chosen, seed=seed + 100 + k, vocabulary=vocabulary, names=lists["names"]
        )
    labels = position_labels(prompts["aligned"], vocabulary)
    name_ids = np.asarray(vocabulary.encode(list(lists["names"])))
    return PromptSet(prompts, corrupted, labels, name_ids)


def _unseen(prompts: Prompts, seen: set, width: int, pad_id: int) -> np.ndarray:
    """The prompts whose training row (prompt, answer, padding to ``width``) is not in ``seen``."""
    if not seen:
        return np.arange(len(prompts))
    rows = np.full((len(prompts), width), pad_id, dtype=np.int32)
    length = min(width, prompts.tokens.shape[1])
    rows[:, :length] = prompts.tokens[:, :length]
    answer = prompts.positions["END"] + 1
    inside = np.flatnonzero(answer < width)
    rows[inside, answer[inside]] = prompts.io[inside]
    return np.asarray([i for i, row in enumerate(rows) if row.tobytes() not in seen], dtype=int)


def select_prompts(prompts: Prompts, rows) -> Prompts:
    """The prompts of ``rows`` (indices or a slice), every field kept."""
    return Prompts(
        tokens=prompts.tokens[rows],
        positions={k: v[rows] for k, v in prompts.positions.items()},
        **{f: getattr(prompts, f)[rows] for f in _FIELDS},
    )


def save_prompt_set(prompt_set: PromptSet, path: str | Path) -> None:
    arrays = {"position_labels": np.asarray(prompt_set.position_labels),
              "name_ids": prompt_set.name_ids}  # fmt: skip
    for split, prompts in prompt_set.prompts.items():
        arrays[f"{split}/tokens"] = prompts.tokens
        arrays[f"{split}/corrupted"] = prompt_set.corrupted[split]
        for name, values in prompts.positions.items():
            arrays[f"{split}/pos/{name}"] = values
        for field in _FIELDS:
            arrays[f"{split}/{field}"] = np.asarray(getattr(prompts, field))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_prompt_set(path: str | Path) -> PromptSet:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    prompts, corrupted = {}, {}
    for split in SPLITS:
        if f"{split}/tokens" not in arrays:
            continue
        prompts[split] = Prompts(
            tokens=arrays[f"{split}/tokens"],
            positions={name: arrays[f"{split}/pos/{name}"] for name in POSITIONS},
            **{field: arrays[f"{split}/{field}"] for field in _FIELDS},
        )
        corrupted[split] = arrays[f"{split}/corrupted"]
    return PromptSet(
        prompts, corrupted, [str(x) for x in arrays["position_labels"]], arrays["name_ids"]
    )
