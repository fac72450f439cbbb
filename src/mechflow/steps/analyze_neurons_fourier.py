"""Find the grokking model's key frequencies from its MLP neurons and attention heads.

Over all p² inputs, each neuron's activation at ``=`` (and each head's attention from ``=`` to
a) is a function of (a, b); its 2-D Fourier transform says how much of its variance each
frequency explains. Writes, in ``--out-dir``:

- ``neuron_fourier.csv`` and ``attention_fourier.csv``: kind, unit, frequency,
  fraction_explained, live (long format);
- ``key_frequencies.csv``: frequency, n_neurons, neuron_share, embedding_share, key_fraction
  (the share of live-neuron variance all key frequencies explain);
- ``activation_maps.csv``: kind, unit, frequency, a, b, value for every head and the most
  periodic neuron of each key frequency (the paper's heatmaps).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mechflow.artifacts import write_table
from mechflow.experiments.grokking.fourier import (
    dominant_frequencies,
    key_frequencies,
    key_frequency_fraction,
    unit_frequencies,
)
from mechflow.experiments.grokking.inputs import pair_maps, read_run
from mechflow.plots.style import read_figure_table
from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)

OUTPUTS = (
    "neuron_fourier.csv",
    "attention_fourier.csv",
    "key_frequencies.csv",
    "activation_maps.csv",
)


def map_rows(maps: np.ndarray, kind: str, units: list[int], frequencies: list[int]) -> pd.DataFrame:
    p = maps.shape[0]
    a, b = np.divmod(np.arange(p * p), p)
    parts = [
        pd.DataFrame(
            {
                "kind": kind,
                "unit": u,
                "frequency": k,
                "a": a,
                "b": b,
                "value": maps[:, :, u].ravel(),
            }
        )
        for u, k in zip(units, frequencies, strict=True)
    ]
    return pd.concat(parts, ignore_index=True)


def run(
    model_dir: Path,
    embedding_table: Path,
    out_dir: Path,
    *,
    min_neuron_share: float,
    min_fraction: float,
) -> pd.DataFrame:
    if not 0 < min_neuron_share <= 1 or not 0 < min_fraction <= 1:
        raise ValueError("--min-neuron-share and --min-fraction must lie in (0, 1]")
    embedding = read_figure_table(embedding_table)
    task = read_run(model_dir)
    model = task.load()
    if model.cfg.attn_only:
        raise ValueError(f"--model-dir {model_dir}: attention-only model has no MLP neurons")
    neurons, attention = pair_maps(model, task)
    neuron_table = unit_frequencies(neurons, "neuron")
    attention_table = unit_frequencies(attention, "head")
    keys = key_frequencies(neuron_table, embedding, min_neuron_share, min_fraction)
    key_list = keys["frequency"].tolist()
    keys["key_fraction"] = float(np.mean(key_frequency_fraction(neuron_table, key_list)))

    best = dominant_frequencies(neuron_table)
    shown = best[best["frequency"].isin(key_list)].sort_values("fraction_explained")
    shown = shown.groupby("frequency").tail(1).sort_values("frequency")  # best neuron per key
    head_best = dominant_frequencies(attention_table).set_index("unit")["frequency"]
    heads = list(range(attention.shape[2]))
    maps = pd.concat(
        [
            map_rows(attention, "head", heads, [int(head_best.get(h, 0)) for h in heads]),
            map_rows(neurons, "neuron", shown["unit"].tolist(), shown["frequency"].tolist()),
        ],
        ignore_index=True,
    )
    name = model_dir.name
    for df, file in zip((neuron_table, attention_table, keys, maps), OUTPUTS, strict=True):
        df.insert(0, "model", name)
        write_table(df, out_dir / file)
    log.info(
        "key frequencies %s; they explain %.2f of live-neuron variance",
        key_list,
        keys["key_fraction"].iloc[0] if len(keys) else 0.0,
    )
    return keys


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    parser.add_argument(
        "--embedding",
        dest="embedding_table",
        required=True,
        type=Path,
        help="embedding_fourier.csv",
    )
    parser.add_argument(
        "--min-neuron-share",
        type=float,
        required=True,
        help="a key frequency dominates at least this share of live neurons",
    )
    parser.add_argument(
        "--min-fraction",
        type=float,
        required=True,
        help="a neuron counts for its best frequency when it explains this much of its variance",
    )
    add_runtime_flags(parser)
    parser.add_argument("--out-dir", required=True, type=Path)
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
