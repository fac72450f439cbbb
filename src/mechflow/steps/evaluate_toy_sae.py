"""How many of a toy model's true features an SAE trained on its hidden layer recovers.

The true features are the columns W_i of the toy model instance (their directions in the hidden
space); a feature is recovered when some decoder row has cosine similarity >= ``--threshold``
with it. Only features the model represents (‖W_i‖ >= ``--represented``) can be recovered.
Writes ``feature, importance, norm, represented, max_cosine, best_latent, recovered``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from mechflow.artifacts import write_table
from mechflow.runtime import start
from mechflow.steps import run_with_flags, step_parser

log = logging.getLogger(__name__)


def run(
    sae_dir: Path,
    model_dir: Path,
    out: Path,
    *,
    threshold: float,
    represented: float,
) -> pd.DataFrame:
    from mechflow.experiments.superposition.toy_model import load_toy_model
    from mechflow.saes.evaluate import feature_recovery
    from mechflow.saes.saelens_format import load_sae, sae_metadata

    sae, cfg = load_sae(sae_dir)
    ours = sae_metadata(cfg).get("mechflow") or {}
    instance = ours.get("store_instance")
    model, toy_cfg = load_toy_model(model_dir)
    if instance is None:
        raise ValueError(f"--sae {sae_dir}: cfg.json does not say which toy instance it read")
    w = model.W[int(instance)].detach().T  # feature d_hidden
    if w.shape[1] != sae.W_dec.shape[1]:
        raise ValueError(
            f"--sae {sae_dir} reads width {sae.W_dec.shape[1]}, {model_dir} has d_hidden {w.shape[1]}"
        )
    norms = w.norm(dim=1)
    recovery = feature_recovery(sae.W_dec.detach(), w, threshold)
    df = pd.DataFrame(
        {
            "feature": range(len(w)),
            "importance": toy_cfg.importance(),
            "norm": norms.numpy(),
            "represented": (norms >= represented).numpy(),
            "max_cosine": recovery["max_cosine"].numpy(),
            "best_latent": recovery["best_latent"].numpy(),
        }
    )
    df["recovered"] = df["represented"] & (df["max_cosine"] >= threshold)
    df.insert(0, "sae", sae_dir.name)
    write_table(df, out)
    n_rep = int(df.represented.sum())
    log.info(
        "%s recovers %d of %d represented features (cosine >= %g)",
        sae_dir.name,
        int(df.recovered.sum()),
        n_rep,
        threshold,
    )
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--sae", dest="sae_dir", required=True, type=Path, help="SAE directory")
    parser.add_argument("--model-dir", required=True, type=Path, help="toy-model directory")
    parser.add_argument("--threshold", required=True, type=float)
    parser.add_argument("--represented", required=True, type=float)
    parser.add_argument("--out", required=True, type=Path, help="recovery.csv")
    args = parser.parse_args(argv)
    start()
    with torch.no_grad():
        run_with_flags(run, args)


if __name__ == "__main__":
    main()
