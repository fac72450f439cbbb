"""Save and load probes: ``probes.safetensors`` (tensors) + ``cfg.json`` (everything else).

``probes.safetensors``: ``weight (hook, target, d_model, class)``, ``bias (hook, target,
class)``, ``mean`` and ``std (hook, d_model)`` (the standardisation the weights expect).
``cfg.json``: the config, the hook/target/class names, the shapes, what the probes were
trained on (``source``: a store's provenance), any caller ``provenance``, package versions and
the weights file's sha256. Each file is written atomically, weights first: a cfg.json always
names the weights it was written with, so a pair torn by a crash (or a weights file copied
from elsewhere) is refused on load, not silently used. Loading never unpickles.
"""

from __future__ import annotations

import os
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
from mechflow.probes.config import ProbeConfig
from mechflow.probes.linear import Probes

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "probes.safetensors"
FORMAT = "mechflow.probes"
FORMAT_VERSION = 1
TENSORS = ("weight", "bias", "mean", "std")


def save_probes(
    probes: Probes, directory: str | os.PathLike, *, provenance: dict[str, Any] | None = None
) -> Path:
    """Write ``directory/probes.safetensors`` and ``directory/cfg.json``; returns the directory."""
    directory = Path(directory)
    tensors = {
        k: getattr(probes, k).detach().to("cpu", torch.float32).contiguous() for k in TENSORS
    }
    digest = save_safetensors(tensors, directory / WEIGHTS_FILE)
    H, T, D, C = probes.weight.shape
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": probes.config.to_dict(),
        "hook_names": list(probes.hook_names),
        "target_names": list(probes.target_names),
        "class_names": list(probes.class_names),
        "d_model": D,
        "n_hooks": H,
        "n_targets": T,
        "n_classes": C,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "source": probes.source,
        "provenance": provenance or {},
        "versions": package_versions(),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": digest,
    }
    write_json(cfg, directory / CFG_FILE)
    return directory


def load_probes(directory: str | os.PathLike, device: torch.device | str = "cpu") -> Probes:
    """The probes saved in ``directory``; refuses (naming the file) a cfg.json that is not a
    probes config, or weights that are not the ones it was written with."""
    directory = Path(directory)
    cfg_path, weights_path = directory / CFG_FILE, directory / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{directory}: not a probes directory (needs {CFG_FILE} and {WEIGHTS_FILE})"
        )
    cfg = read_json(cfg_path)
    if cfg.get("format") != FORMAT or cfg.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path}: format {cfg.get('format')!r} version {cfg.get('format_version')!r} "
            f"is not {FORMAT!r} version {FORMAT_VERSION}"
        )
    state = load_safetensors(weights_path, device="cpu", sha256=cfg.get("weights_sha256"))
    if set(state) != set(TENSORS):
        raise ValueError(f"{weights_path}: tensors {sorted(state)}, expected {sorted(TENSORS)}")
    for name, shape in cfg["shapes"].items():
        if list(state[name].shape) != list(shape):
            raise ValueError(
                f"{weights_path}: {name} has shape {list(state[name].shape)}, {cfg_path} says {shape}"
            )
    try:
        probes = Probes(
            **{k: state[k].to(device) for k in TENSORS},
            hook_names=tuple(cfg["hook_names"]),
            target_names=tuple(cfg["target_names"]),
            class_names=tuple(cfg["class_names"]),
            config=ProbeConfig.from_dict(cfg["config"]),
            source=cfg.get("source") or {},
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{cfg_path}: does not describe {weights_path} ({err})") from err
    return probes
