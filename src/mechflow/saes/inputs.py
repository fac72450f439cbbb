"""Open an SAE together with the model and activation store it is evaluated on, refusing a
mismatch (another model, a missing hook, another width) with a message that names the flag."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechflow.models.build import model_fingerprint
from mechflow.saes.base import SparseAutoencoder
from mechflow.saes.saelens_format import load_sae, sae_metadata
from mechflow.store.reader import ActivationStore, ProvenanceMismatchError, open_store


@dataclass(frozen=True)
class SAEInputs:
    sae: SparseAutoencoder
    cfg: dict[str, Any]
    hook: str
    skip_bos: bool
    architecture: str | None
    acts: ActivationStore


def open_sae_inputs(sae_dir: Path, store: Path, model_dir: Path) -> SAEInputs:
    sae, cfg = load_sae(sae_dir)
    meta = sae_metadata(cfg)
    hook = meta.get("hook_name")
    if not hook:
        raise ValueError(f"--sae {sae_dir}: cfg.json names no hook_name")
    ours = meta.get("mechflow") or {}
    fingerprint = model_fingerprint(model_dir)
    if ours.get("model_hash") not in (None, fingerprint):
        raise ValueError(
            f"--sae {sae_dir} was trained on activations of another model than --model-dir "
            f"{model_dir} (model_hash {ours['model_hash']!r}, expected {fingerprint!r})"
        )
    acts = open_store(store)  # IncompleteStoreError names the store and why
    if hook not in acts.hooks:
        raise ValueError(
            f"--store {store} has no hook {hook!r} (the hook_name of --sae {sae_dir}); "
            f"it has {acts.hooks}"
        )
    try:
        open_store(store, expect={"model_hash": fingerprint})
    except ProvenanceMismatchError as err:
        raise ValueError(
            f"--store {store} was cached from another model than --model-dir {model_dir} "
            f"(model_hash {err.found!r}, expected {err.expected!r})"
        ) from err
    width = 1
    for size in acts.array(hook).shape[2:]:
        width *= int(size)
    if width != sae.d_in:
        raise ValueError(
            f"--sae d_in is {sae.d_in} but {hook} in --store {store} has width {width}"
        )
    return SAEInputs(
        sae=sae,
        cfg=cfg,
        hook=hook,
        skip_bos=bool(ours.get("skip_bos", False)),
        architecture=ours.get("architecture", cfg.get("architecture")),
        acts=acts,
    )
