"""Summarise a few latents of a trained SAE for a dashboard: top-activating contexts, activation
histograms and direct logit effects.

Reads the SAE directory (SAELens layout), its hook's activations from ``--store`` (which must
hold that hook and come from ``--model-dir``) and the model's unembedding. Latents are
``--latents`` or the ``--n-latents`` most frequently firing among those firing on fewer than
``--max-frequency`` of tokens. Writes three tidy tables:

- ``--contexts``: latent, rank, seq, pos, activation, token, text, context (the text around
  the token with ``--tokenizer``, the activating one in guillemets: ``"self.«_name» ="``; else
  ids, the activating one bracketed: ``"12 87 [45] 3"``); at most ``--top-k`` rows per latent.
- ``--histograms``: latent, bin_left, bin_right, count, frequency (of the nonzero activations;
  counts sum to the latent's firing count, frequency = firing count / tokens).
- ``--logits``: latent, sign (positive/negative), rank, token, text, value (W_dec[latent] @ W_U,
  final LayerNorm scale ignored).

Position 0 (BOS) is left out when the SAE was trained without it, as in evaluate_sae.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.artifacts import write_table
from mechflow.runtime import add_runtime_flags, pick_device
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(
    sae_dir: Path,
    store: Path,
    model_dir: Path,
    contexts_out: Path,
    histograms_out: Path,
    logits_out: Path,
    *,
    latents: list[int] | None = None,
    n_latents: int,
    max_frequency: float = 0.5,
    top_k: int = 8,
    context: int = 6,
    after: int = 2,
    bins: int = 30,
    n_logits: int = 8,
    batch_size: int = 64,
    tokenizer_path: Path | None = None,
    device: str = "auto",
):
    from mechflow.models.build import load_model
    from mechflow.saes.dashboard import summarize_latents
    from mechflow.saes.inputs import open_sae_inputs

    for flag, value, low in (
        ("--n-latents", n_latents, 1), ("--top-k", top_k, 1), ("--context", context, 0),
        ("--after", after, 0), ("--bins", bins, 1), ("--n-logits", n_logits, 1),
        ("--batch-size", batch_size, 1),
    ):  # fmt: skip
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if not 0 < max_frequency <= 1:
        raise ValueError(f"--max-frequency must lie in (0, 1], got {max_frequency}")

    inputs = open_sae_inputs(sae_dir, store, model_dir)
    sae, hook, acts = inputs.sae, inputs.hook, inputs.acts
    if latents is not None:
        bad = [i for i in latents if not 0 <= i < sae.d_sae]
        if bad:
            raise ValueError(f"--latents {bad}: out of range for the SAE's d_sae={sae.d_sae}")

    decode = None
    if tokenizer_path is not None:
        from mechflow.data.text import decode as decode_ids
        from mechflow.data.text import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)

        def decode(ids):
            return decode_ids(tokenizer, ids)

    dev = pick_device(device)
    model = load_model(model_dir, device=dev)
    summary = summarize_latents(
        sae.to(dev), acts, hook, model, latents=latents, n_latents=n_latents,
        max_frequency=max_frequency, skip_bos=inputs.skip_bos, top_k=top_k, context=context,
        after=after, bins=bins, n_logits=n_logits, batch_size=batch_size, decode=decode,
    )  # fmt: skip
    write_table(summary.contexts, contexts_out)
    write_table(summary.histograms, histograms_out)
    write_table(summary.logits, logits_out)
    freq = summary.stats.frequency
    log.info(
        "%s: latents %s (firing on %s of %d tokens)",
        sae_dir.name, summary.latents,
        ", ".join(f"{freq[i]:.1%}" for i in summary.latents), summary.stats.n_tokens,
    )  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "sae", "model_dir")
    parser.add_argument(
        "--latents", type=int, nargs="+", default=None, help="latents to show (default: chosen)"
    )
    parser.add_argument(
        "--n-latents", required=True, type=int, help="latents chosen without --latents"
    )
    parser.add_argument(
        "--max-frequency",
        type=float,
        default=0.5,
        help="chosen latents fire on fewer than this fraction of tokens (if enough do)",
    )
    parser.add_argument("--top-k", type=int, default=8, help="top-activating contexts per latent")
    parser.add_argument(
        "--tokenizer",
        dest="tokenizer_path",
        type=Path,
        default=None,
        help="tokenizer.json: contexts and tokens as text (default: token ids)",
    )
    parser.add_argument("--context", type=int, default=6, help="tokens shown before the token")
    parser.add_argument("--after", type=int, default=2, help="tokens shown after the token")
    parser.add_argument("--bins", type=int, default=30, help="histogram bins per latent")
    parser.add_argument("--n-logits", type=int, default=8, help="tokens per sign of logit effect")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per store read")
    add_runtime_flags(parser, device=True)
    parser.add_argument(
        "--contexts",
        dest="contexts_out",
        required=True,
        type=Path,
        help="top contexts table (.csv)",
    )
    parser.add_argument(
        "--histograms",
        dest="histograms_out",
        required=True,
        type=Path,
        help="histogram table (.csv)",
    )
    parser.add_argument(
        "--logits", dest="logits_out", required=True, type=Path, help="logit effect table (.csv)"
    )
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
