"""Build, save and load HookedTransformers: the one module that constructs TransformerLens models.

On disk a model is ``model.safetensors`` + ``config.json`` side by side. ``config.json`` holds the
full ``HookedTransformerConfig`` (JSON-safe fields) so trained and imported pretrained models load
through the same path, and loading never unpickles anything. It also records the weights' sha256
(``weights_sha256``), checked on load, so an altered or truncated weights file is refused.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mechflow.artifacts import (
    file_sha256,
    load_safetensors,
    read_json,
    save_safetensors,
    write_json,
)
from mechflow.models import WEIGHTS_FILE
from mechflow.models.config import Architecture

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"  # a pretrained model's own tokenizer, saved beside its weights
# config.json's record of the weights file, checked on load (absent in models saved before it).
WEIGHTS_SHA256_KEY = "weights_sha256"
# Config fields that describe the machine or are derived, not the model.
_CFG_SKIP = {"device", "n_devices", "dtype", "n_params", "tokenizer_name", "model_name"}


def _transformer_lens():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import transformer_lens
    return transformer_lens


def hooked_config(arch: Architecture, seed: int | None = None) -> HookedTransformerConfig:
    tl = _transformer_lens()
    fields = arch.to_dict()
    if fields["attn_only"]:
        fields["d_mlp"] = None
    if fields["d_vocab_out"] is None:
        fields["d_vocab_out"] = -1  # TransformerLens: same as d_vocab
    return tl.HookedTransformerConfig(**fields, seed=seed, device="cpu")


def build_model(arch: Architecture, seed: int) -> HookedTransformer:
    """A freshly initialised model; the same seed gives the same weights."""
    tl = _transformer_lens()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return tl.HookedTransformer(hooked_config(arch, seed=seed))


def _config_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    out = {}
    for key, value in cfg.to_dict().items():
        if key in _CFG_SKIP:
            continue
        if isinstance(value, torch.dtype):
            value = str(value)
        elif hasattr(value, "item"):  # numpy scalars
            value = value.item()
        out[key] = value
    return out


def save_model(
    model: HookedTransformer, out_dir: str | os.PathLike, extra: dict | None = None
) -> Path:
    """Write weights then config, each atomically; returns the weights path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    digest = save_weights(model, weights)
    meta = {
        "hooked_transformer_config": _config_to_json(model.cfg),
        **(extra or {}),
        WEIGHTS_SHA256_KEY: digest,
    }
    write_json(meta, out_dir / CONFIG_FILE)
    return weights


def save_weights(model: HookedTransformer, path: str | os.PathLike) -> str:
    """Write the state dict atomically; returns the file's sha256."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save_safetensors(state, path)


def load_model(
    model_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> HookedTransformer:
    """Load a saved model (or one of its checkpoints via ``weights``) without unpickling.

    The model's own weights are checked against the sha256 its config.json records; a
    checkpoint has no record, so only a truncated or malformed one is refused.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"model config not found: {config_path}")
    weights_path = Path(weights) if weights is not None else model_dir / WEIGHTS_FILE
    if not weights_path.exists():
        raise FileNotFoundError(f"model weights not found: {weights_path}")
    tl = _transformer_lens()
    meta = read_json(config_path)
    fields = meta["hooked_transformer_config"]
    own = weights_path.resolve() == (model_dir / WEIGHTS_FILE).resolve()
    digest = meta.get(WEIGHTS_SHA256_KEY) if own else None
    state = load_safetensors(weights_path, device=device, sha256=digest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cfg = tl.HookedTransformerConfig(**fields, device=str(device))
        model = tl.HookedTransformer(cfg)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 of the weights file: what provenance records and readers compare."""
    return file_sha256(Path(model_dir) / WEIGHTS_FILE)


class PretrainedUnavailable(RuntimeError):
    """Raised when pretrained weights are not on this machine (no download is attempted)."""


def load_pretrained(name: str, path: str | None = None) -> HookedTransformer:
    """Load a pretrained model through TransformerLens from local files only; never downloads.

    Without ``path``, ``name`` is an official TransformerLens name (e.g. ``gpt2``) whose weights
    must already be in the Hugging Face cache. With ``path``, the model is read from that local
    ``save_pretrained`` directory (its ``config.json`` gives the architecture) and ``name`` is a
    label. Either way TransformerLens's usual processing (folded LayerNorm, centred weights) applies.
    """
    from mechflow.models import pretrained

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    if path is not None:
        why = pretrained.path_problem(path)
        if why is not None:
            raise PretrainedUnavailable(
                f"pretrained model {name!r}: {why}; give a directory saved with save_pretrained"
            )
    tl = _transformer_lens()
    hint = pretrained.weights_help(name, repo=pretrained.hub_repo(name))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = (
                _from_local_dir(tl, path)
                if path
                else tl.HookedTransformer.from_pretrained(name, device="cpu", local_files_only=True)
            )
    except (OSError, ValueError) as err:
        raise PretrainedUnavailable(f"{hint[0].upper()}{hint[1:]} ({type(err).__name__})") from err
    model.eval()
    return model


def _from_local_dir(tl, path: str) -> HookedTransformer:
    """TransformerLens's from_pretrained, for a directory (it only accepts official names)."""
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    hf_config = hf_model.config.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        config_dir = path
        if "n_positions" in hf_config and "n_ctx" not in hf_config:
            # TL 3.9 reads GPT-2's n_ctx from the directory's config.json, which transformers 5
            # does not write: a copy with it, for the config only (weights come from hf_model)
            hf_config["n_ctx"] = hf_config["n_positions"]
            (Path(tmp) / "config.json").write_text(json.dumps(hf_config))
            config_dir = tmp
        cfg = loading.get_pretrained_model_config(
            config_dir, hf_cfg=hf_config, fold_ln=True, device="cpu"
        )
    cfg.model_name = Path(path).name
    cfg.tokenizer_name = None  # a tokenizer is not needed to run on token ids
    model = tl.HookedTransformer(cfg)
    state = loading.get_pretrained_state_dict(path, cfg, hf_model=hf_model)
    model.load_and_process_state_dict(
        state,
        fold_ln=True,
        center_writing_weights=True,
        center_unembed=True,
        fold_value_biases=True,
        refactor_factored_attn_matrices=False,
    )
    return model
