"""Measure superposition in a trained batch of toy models: tidy tables for the figures.

Reads a toy-model directory (``model.safetensors`` + ``cfg.json``) and writes
``--wtw`` (model, instance, i, j, value): WᵀW per instance;
``--features`` (model, instance, feature_probability, sparsity, feature, importance, bias, norm,
superposition, dimensionality, represented): one row per instance and feature;
``--instances`` (model, instance, feature_probability, sparsity, inverse_density, d_hidden,
n_features, dims_per_feature, features_per_dim, n_represented, fraction_represented).
The model name is the directory's name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.analysis.inputs import model_name
from mechflow.artifacts import write_table
from mechflow.experiments.superposition.analysis import (
    feature_table,
    instance_table,
    wtw_table,
)
from mechflow.experiments.superposition.toy_model import load_toy_model
from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(
    model_dir: Path,
    wtw_out: Path,
    features_out: Path,
    instances_out: Path,
    *,
    threshold: float,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    if not 0 < threshold < 1:
        raise ValueError(f"--threshold must lie in (0, 1), got {threshold}")
    model, cfg = load_toy_model(model_dir)
    name = model_name(model_dir)
    W = model.W.detach().double().numpy()  # instances hidden features
    b = model.b_final.detach().double().numpy()  # instances features
    probs = cfg.probabilities()
    wtw = wtw_table(W, name)
    features = feature_table(W, b, probs, cfg.importance(), name, threshold)
    instances = instance_table(W, probs, name, threshold)
    # every table is complete before the first is written
    write_table(wtw, wtw_out)
    write_table(features, features_out)
    write_table(instances, instances_out)
    for row in instances.itertuples():
        log.info(
            "instance %d: 1-S=%.3g  %d/%d features represented, %.3f dimensions per feature",
            row.instance,
            row.feature_probability,
            row.n_represented,
            row.n_features,
            row.dims_per_feature,
        )
    return wtw, features, instances


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model-dir", required=True, type=Path, help="toy-model directory")
    parser.add_argument(
        "--threshold",
        type=float,
        required=True,
        help="‖W_i‖ above which a feature counts as represented",
    )
    add_runtime_flags(parser)
    parser.add_argument("--wtw", dest="wtw_out", required=True, type=Path, help="wtw.csv")
    parser.add_argument(
        "--features", dest="features_out", required=True, type=Path, help="features.csv"
    )
    parser.add_argument(
        "--instances", dest="instances_out", required=True, type=Path, help="instances.csv"
    )
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
