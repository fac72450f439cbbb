"""Save and load SAEs in the directory layout SAELens (>= 6) reads with ``SAE.load_from_disk``.

``cfg.json``: ``architecture`` (``standard`` for ReLU, ``topk``, ``jumprelu``), ``d_in``,
``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
``reshape_activations``, ``k`` and ``rescale_acts_by_decoder_norm`` for topk, and ``metadata``
(``hook_name``, ``model_name``, ..., plus ``sae_lens_version``: SAELens treats configs without
one >= 6 as its pre-6 layout). Our own settings ride along in ``metadata.mechflow``.
``sae_weights.safetensors``: ``W_enc (d_in, d_sae)``, ``b_enc``, ``W_dec (d_sae, d_in)``,
``b_dec``, and ``threshold (d_sae)`` for jumprelu.

A BatchTopK SAE is saved as the JumpReLU it is at inference (SAELens does the same). Inputs
are never normalised at load time: the training-time scale is folded into the weights.
``metadata.mechflow.weights_sha256`` records the weights file, checked on load (SAELens ignores
it; SAEs saved by SAELens or before it have none).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mechflow.artifacts import (
    load_safetensors,
    package_versions,
    read_json,
    save_safetensors,
    write_json,
)
from mechflow.saes.base import SparseAutoencoder

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# The SAELens cfg.json layout we write (its 6.x form, metadata nested).
SAELENS_LAYOUT_VERSION = "6.0.0"


def saelens_config(
    sae: SparseAutoencoder,
    *,
    hook_name: str,
    model_name: str | None = None,
    context_size: int | None = None,
    dataset_path: str | None = None,
    prepend_bos: bool = True,
    mechflow: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg = {
        "architecture": sae.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if hook_name.endswith("hook_z") else "none",
        **sae.extra_config(),
        "metadata": {
            "sae_lens_version": SAELENS_LAYOUT_VERSION,
            "sae_lens_training_version": None,
            "model_name": model_name,
            "hook_name": hook_name,
            "hook_head_index": None,
            "prepend_bos": prepend_bos,
            "context_size": context_size,
            "dataset_path": dataset_path,
            "mechflow": {
                "architecture": sae.architecture,
                "versions": package_versions(),
                **(mechflow or {}),
            },
        },
    }
    return cfg


def save_sae(
    sae: SparseAutoencoder,
    out_dir: str | os.PathLike,
    **config: Any,
) -> Path:
    """Write ``out_dir`` whole or not at all: files go to a temporary sibling, renamed into place.

    ``config`` goes to :func:`saelens_config` (``hook_name`` is required).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg = saelens_config(sae, **config)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in sae.inference_state().items()
    }
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        # through atomic_path: safetensors alone leaves a 0600 file
        digest = save_safetensors(tensors, tmp / WEIGHTS_FILE)
        cfg["metadata"]["mechflow"]["weights_sha256"] = digest
        write_json(cfg, tmp / CFG_FILE)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give what mkdir would
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def load_sae(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Load an SAE saved by :func:`save_sae` (or by SAELens, for the architectures we know).

    Returns the SAE in eval mode and the cfg.json dict. Never unpickles.
    """
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{path}: not an SAE directory (needs {CFG_FILE} and {WEIGHTS_FILE})"
        )
    cfg = read_json(cfg_path)
    digest = (sae_metadata(cfg).get("mechflow") or {}).get("weights_sha256")
    state = load_safetensors(weights_path, device="cpu", sha256=digest)
    arch = cfg.get("architecture", "standard")
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise NotImplementedError(
            f"{cfg_path}: normalize_activations={cfg['normalize_activations']!r} is not supported"
        )
    if arch == "standard":
        from mechflow.saes.relu import ReluSAE

        sae: SparseAutoencoder = ReluSAE(d_in, d_sae)
    elif arch == "topk":
        from mechflow.saes.topk import TopKSAE

        if cfg.get("rescale_acts_by_decoder_norm"):
            raise NotImplementedError(f"{cfg_path}: rescale_acts_by_decoder_norm is not supported")
        sae = TopKSAE(d_in, d_sae, k=int(cfg["k"]))
    elif arch == "jumprelu":
        from mechflow.saes.jumprelu import JumpReLUSAE

        sae = JumpReLUSAE(d_in, d_sae)
    else:
        raise NotImplementedError(f"{cfg_path}: SAELens architecture {arch!r} is not supported")
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
    expected = set(sae.state_dict())
    found = set(state)
    if found != expected:
        raise ValueError(f"{weights_path}: tensors {sorted(found)}, expected {sorted(expected)}")
    sae.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return sae.to(device).eval(), cfg


def sae_metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    """The metadata block of a cfg.json (top-level keys for SAELens's pre-6 layout)."""
    meta = dict(cfg.get("metadata") or {})
    for key in ("hook_name", "model_name", "context_size"):
        if key not in meta and key in cfg:
            meta[key] = cfg[key]
    return meta
