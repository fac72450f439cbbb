"""Cache a toy model's hidden activations h = W x as an activation store (hook ``hook_hidden``).

Samples ``--n-samples`` sparse feature vectors x with the chosen instance's feature probability
(the distribution the instance was trained on), and writes h = W x (``seq, pos = 1, d_hidden``)
in the same zarr layout as :mod:`mechflow.steps.cache_activations`, so the SAE trainer reads it
like any language model's store. The ground truth (W's columns) stays in the model directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mechflow.artifacts import config_hash, file_sha256
from mechflow.runtime import add_runtime_flags, seed_everything
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)

HOOK = "hook_hidden"


def run(model_dir: Path, out: Path, *, instance: int, n_samples: int, seed: int) -> Path:
    from mechflow.experiments.superposition.toy_model import (
        WEIGHTS_FILE,
        generate_batch,
        load_toy_model,
    )
    from mechflow.store.writer import write_array_store

    if n_samples < 1:
        raise ValueError(f"--n-samples must be >= 1, got {n_samples}")
    model, cfg = load_toy_model(model_dir)
    n_instances = cfg.n_instances
    if not -n_instances <= instance < n_instances:
        raise ValueError(f"--instance {instance}: {model_dir} has {n_instances} instances")
    instance %= n_instances
    probability = float(cfg.probabilities()[instance])
    generator = seed_everything(seed)
    p = torch.full((1, cfg.n_features), probability)
    with torch.no_grad():
        x = generate_batch(n_samples, p, generator)[0]  # sample feature
        hidden = x @ model.W[instance].T  # sample d_hidden
    acts = hidden.numpy().astype(np.float32)[:, None, :]  # seq pos=1 d_hidden
    sampling = {"instance": instance, "n_samples": n_samples, "seed": seed, "p": probability}
    write_array_store(
        out,
        {HOOK: acts},
        provenance={
            "model": model_dir.name,
            "model_hash": file_sha256(model_dir / WEIGHTS_FILE),
            "dataset": f"toy features {sampling}",
            "dataset_sha256": config_hash(sampling),
            "instance": instance,
            "feature_probability": probability,
        },
    )
    log.info(
        "cached %d hidden vectors of %s instance %d (p = %.3g)",
        n_samples,
        model_dir.name,
        instance,
        probability,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model-dir", required=True, type=Path, help="toy-model directory")
    parser.add_argument("--instance", required=True, type=int, help="instance; -1 = the last")
    parser.add_argument("--n-samples", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    add_runtime_flags(parser)
    parser.add_argument("--out", required=True, type=Path, help="activation store (.zarr)")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
