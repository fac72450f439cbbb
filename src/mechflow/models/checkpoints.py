"""Weights saved along training, one ``<unit>_<N>.safetensors`` per saved step or epoch, and the
model at each of them: built once, with each checkpoint's weights loaded into it in turn."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mechflow.artifacts import load_safetensors

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)


def checkpoint_name(index: int, unit: str = "step") -> str:
    return f"{unit}_{index:06d}.safetensors"


def list_checkpoints(directory: str | os.PathLike, unit: str = "step") -> list[tuple[int, Path]]:
    """``(index, path)`` of every ``<unit>_<N>.safetensors`` in ``directory``, by index."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoints directory not found: {directory}")
    pattern = re.compile(rf"^{re.escape(unit)}_(\d+)\.safetensors$")
    found = []
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    if not found:
        raise ValueError(f"no {unit}_<N>.safetensors checkpoints in {directory}")
    return sorted(found)


def iter_checkpoint_models(
    model_dir: str | os.PathLike,
    checkpoints: Sequence[tuple[int, Path]],
    device: torch.device | str = "cpu",
) -> Iterator[tuple[int, HookedTransformer]]:
    """``(index, model)`` for each checkpoint; the same model object, its weights swapped."""
    from mechflow.models.build import load_model

    model = None
    for index, path in checkpoints:
        if model is None:
            model = load_model(model_dir, weights=path, device=device)
        else:
            model.load_state_dict(load_safetensors(path, device=device), strict=True)
        yield index, model


def load_resume_state(
    path: str | os.PathLike | None, *, identity: str, format: int, map_location: Any = "cpu"
) -> dict[str, Any] | None:
    """A trainer's saved loop state, or None (start afresh) when there is none, it cannot be
    read (torn, foreign), or it was written by another format, config or data (``identity``)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a torn or foreign file: start afresh
        log.warning("ignoring unreadable resume state %s (%s)", path, err)
        return None
    if state.get("format") != format or state.get("identity") != identity:
        log.info("resume state %s is from another run (config or data); starting afresh", path)
        return None
    return state
