"""Evaluate a trained SAE: sparsity, reconstruction, dead/dense latents and CE loss recovered.

Reads the SAE directory (SAELens layout), its hook's activations from ``--store`` (which must
come from ``--model-dir``) and, for the downstream loss, ``--tokens`` run through the model with
the SAE spliced in at its hook. Writes a tidy table ``sae, hook, architecture, metric, value``
with metric in: n_tokens, l0, mse, mse_per_token, fvu, explained_variance, n_dead, frac_dead,
n_dense, frac_dense, ce_clean, ce_sae, ce_zero_ablated, ce_mean_ablated, ce_recovered_zero,
ce_recovered_mean. Position 0 (BOS) is left out of the metrics and left untouched in the model
when the SAE was trained without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mechflow.analysis.inputs import check_tokens, read_model_config
from mechflow.artifacts import write_table
from mechflow.runtime import add_runtime_flags, pick_device
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)

COLUMNS = ["sae", "hook", "architecture", "metric", "value"]
ACTIVATION_METRICS = (
    "n_tokens", "l0", "mse", "mse_per_token", "fvu", "explained_variance", "n_dead",
    "frac_dead", "n_dense", "frac_dense",
)  # fmt: skip


def run(
    sae_dir: Path,
    store: Path,
    model_dir: Path,
    tokens_path: Path,
    out: Path,
    *,
    max_sequences: int | None = None,
    batch_size: int = 32,
    dense_threshold: float = 0.1,
    device: str = "auto",
) -> pd.DataFrame:
    from mechflow.models.build import load_model
    from mechflow.saes.evaluate import activation_metrics, ce_loss_recovered, store_token_batches
    from mechflow.saes.inputs import open_sae_inputs

    if max_sequences is not None and max_sequences < 1:
        raise ValueError(f"--max-sequences must be >= 1, got {max_sequences}")
    inputs = open_sae_inputs(sae_dir, store, model_dir)
    sae, hook, acts, skip_bos = inputs.sae, inputs.hook, inputs.acts, inputs.skip_bos
    architecture = inputs.architecture
    model_cfg = read_model_config(model_dir)
    tokens = check_tokens(tokens_path, d_vocab=model_cfg["d_vocab"], n_ctx=model_cfg["n_ctx"])

    dev = pick_device(device)
    sae = sae.to(dev)
    batches = store_token_batches(acts, hook, skip_bos=skip_bos, max_sequences=max_sequences)
    metrics = activation_metrics(sae, batches, dense_threshold=dense_threshold)
    model = load_model(model_dir, device=dev)
    eval_tokens = tokens[:max_sequences] if max_sequences else tokens
    ce = ce_loss_recovered(
        model,
        sae,
        hook,
        eval_tokens,
        batch_size=batch_size,
        keep_bos=skip_bos,
        mean_act=metrics["mean_activation"],
    )
    values = {**{k: metrics[k] for k in ACTIVATION_METRICS}, **ce}
    name = sae_dir.name or sae_dir.resolve().name
    df = pd.DataFrame(
        [(name, hook, architecture, metric, float(v)) for metric, v in values.items()],
        columns=COLUMNS,
    )
    write_table(df, out)
    log.info(
        "%s: l0 %.2f, fvu %.4f, dead %.1f%%, CE recovered %.3f (zero) / %.3f (mean)",
        name, values["l0"], values["fvu"], 100 * values["frac_dead"],
        values["ce_recovered_zero"], values.get("ce_recovered_mean", float("nan")),
    )  # fmt: skip
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "sae", "model_dir")
    parser.add_argument(
        "--tokens", dest="tokens_path", required=True, type=Path, help="(seq, pos) int .npy"
    )
    parser.add_argument(
        "--max-sequences", type=int, default=None, help="evaluate on the first N sequences"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    parser.add_argument(
        "--dense-threshold", type=float, default=0.1, help="firing frequency of a dense latent"
    )
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out", required=True, type=Path, help="metrics table (.csv)")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
