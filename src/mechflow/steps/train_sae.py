"""Train one sparse autoencoder on one hook of an activation store, saved in SAELens's layout.

Writes ``--out`` (a directory: ``cfg.json`` + ``sae_weights.safetensors``, loadable with
SAELens's ``SAE.load_from_disk``) and ``--log`` (the training curve: one row per logged step).
The SAE config is JSON (inline or a file): ``architecture``, ``d_sae`` or ``expansion_factor``,
``l1_coefficient`` or ``k``, ... (see ``mechflow.saes.config.SAEConfig``); ``hook_name`` and
``d_in`` default to ``--hook`` and the store's width. Refuses, before training, a store that is
incomplete or lacks the hook and a config that is invalid (k > d_sae, coefficient <= 0, unknown
keys). A killed run resumes from ``--checkpoint`` (default ``<out>.ckpt.pt``), deleted on success.
While it trains, the curve grows row by row beside ``--log NAME.csv`` in ``NAME.partial.csv``
(for ``tail -f``; removed once ``--log`` is written).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mechflow.artifacts import write_table
from mechflow.progress import LiveTable, live_path
from mechflow.runtime import add_runtime_flags, pick_device, start
from mechflow.saes.config import SAEConfig
from mechflow.steps import run_with_flags, step_parser

log = logging.getLogger(__name__)


def read_sae_config(value: str) -> dict[str, Any]:
    """Inline JSON (starting with ``{``) or the path of a JSON file."""
    text = value if value.lstrip().startswith("{") else None
    if text is None:
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"--sae-config: no such file (and not inline JSON): {value}")
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--sae-config: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"--sae-config: expected a JSON object, got {type(data).__name__}")
    return data


def default_checkpoint(out: Path) -> Path:
    """Beside the output directory, not inside it: Snakemake deletes a failed job's outputs."""
    return out.with_name(out.name + ".ckpt.pt")


def run(
    store: Path,
    hook: str,
    sae_config: dict[str, Any],
    out: Path,
    log_path: Path,
    *,
    checkpoint: Path | None = None,
    device: str = "auto",
    progress: bool = True,
):
    from mechflow.saes.saelens_format import save_sae
    from mechflow.saes.training import LOG_COLUMNS, StoreSource, train_sae
    from mechflow.store.reader import open_store

    acts = open_store(store)  # IncompleteStoreError names the store and why
    if hook not in acts.hooks:
        raise ValueError(
            f"--hook {hook!r}: the store {store} has no such hook; it has {acts.hooks}"
        )
    data = dict(sae_config)
    if data.setdefault("hook_name", hook) != hook:
        raise ValueError(
            f"--sae-config hook_name {data['hook_name']!r} differs from --hook {hook!r}"
        )
    source = StoreSource(acts, hook, skip_bos=bool(data.get("skip_bos", True)))
    data.setdefault("d_in", source.d_in)
    cfg = SAEConfig.from_dict(data)  # ValueError naming the bad key
    if cfg.d_in != source.d_in:
        raise ValueError(f"sae.d_in is {cfg.d_in} but {hook} in {store} has width {source.d_in}")
    checkpoint = checkpoint or default_checkpoint(out)
    log.info(
        "training a %s SAE (d_in %d, d_sae %d) on %s of %s: %d tokens in the store, %d to train",
        cfg.architecture, cfg.d_in, cfg.d_sae, hook, store, source.n_tokens, cfg.total_tokens,
    )  # fmt: skip
    with LiveTable(live_path(log_path), LOG_COLUMNS) as live:
        result = train_sae(
            cfg,
            source,
            device=pick_device(device),
            checkpoint=checkpoint,
            progress=progress,
            on_log=live.append,
            desc=f"SAE {out.name}",
        )
    prov = acts.provenance
    save_sae(
        result.sae,
        out,
        hook_name=hook,
        model_name=prov.get("model"),
        context_size=prov.get("n_pos"),
        dataset_path=prov.get("dataset"),
        mechflow={
            "config": cfg.to_dict(),
            "skip_bos": cfg.skip_bos,
            "input_scale_folded": result.input_scale,
            "trained_tokens": result.tokens,
            "dead_fraction": result.dead_fraction,
            "store": str(store),
            "store_config_hash": prov.get("config_hash"),
            "model_hash": prov.get("model_hash"),
            "dataset_sha256": prov.get("dataset_sha256"),
            "store_instance": prov.get("instance"),  # toy-model stores: which instance
        },
    )
    write_table(result.log, log_path)
    live.remove()
    checkpoint.unlink(missing_ok=True)
    last = result.log.iloc[-1]
    log.info(
        "wrote %s: final mse %.4g, fvu %.4g, l0 %.2f, dead %.1f%%",
        out, last["mse"], last["fvu"], last["l0"], 100 * result.dead_fraction,
    )  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--store", required=True, type=Path, help="activation store (.zarr)")
    parser.add_argument("--hook", required=True, help="full TransformerLens hook name")
    parser.add_argument(
        "--sae-config", required=True, help="SAE config: inline JSON object or a .json file"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default <out>.ckpt.pt")
    add_runtime_flags(parser, device=True)
    parser.add_argument(
        "--log", dest="log_path", required=True, type=Path, help="training log (.csv)"
    )
    parser.add_argument("--out", required=True, type=Path, help="SAE directory (SAELens layout)")
    args = parser.parse_args(argv)
    start(args.threads)
    args.sae_config = read_sae_config(args.sae_config)
    run_with_flags(run, args)


if __name__ == "__main__":
    main()
