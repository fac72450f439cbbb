"""Reading a trained grokking run back: its task, split, checkpoints and activations over all pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int

from mechflow.artifacts import read_json
from mechflow.experiments.grokking.modular_addition import all_pairs
from mechflow.models.checkpoints import list_checkpoints

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

SPLIT_FILE = "split.npz"
CHECKPOINT_UNIT = "epoch"  # checkpoints/epoch_<N>.safetensors


@dataclass(frozen=True)
class ModularRun:
    """A trained run: p, every pair's inputs and labels, and which rows were trained on."""

    model_dir: Path
    modulus: int
    inputs: Int[torch.Tensor, "pair 3"]
    labels: Int[torch.Tensor, " pair"]
    train_rows: Int[torch.Tensor, " train"]
    test_rows: Int[torch.Tensor, " test"]

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Saved weights by epoch."""
        return list_checkpoints(self.model_dir / "checkpoints", CHECKPOINT_UNIT)

    def load(self, weights: Path | None = None) -> HookedTransformer:
        from mechflow.models.build import load_model

        return load_model(self.model_dir, weights=weights)

    def encode(self, a, b) -> Int[torch.Tensor, "pair 3"]:
        """The tokens this run was trained on for the pairs (a, b): see :func:`encode_pairs`."""
        return encode_pairs(self.modulus, a, b)


def encode_pairs(modulus: int, a, b) -> Int[torch.Tensor, "pair 3"]:
    """Model inputs ``[a, b, =]`` (``=`` is token ``modulus``), one row per pair, as in training.

    ``a`` and ``b`` are ints or array-likes, broadcast against each other and flattened; a single
    pair gives one row, so the result always has the batch axis a model call needs.
    """
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    a, b = a.reshape(-1), b.reshape(-1)
    for name, value in (("a", a), ("b", b)):
        if not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"{name} must be integers in [0, {modulus}), got {value.dtype}")
        bad = value[(value < 0) | (value >= modulus)]
        if bad.size:
            raise ValueError(f"{name} must lie in [0, {modulus}), got {bad[:5].tolist()}")
    inputs = np.stack([a, b, np.full_like(a, modulus)], axis=1)  # pair 3
    return torch.from_numpy(inputs.astype(np.int64))


def read_run(model_dir: str | Path) -> ModularRun:
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (not a trained model)")
    task = read_json(config_path).get("task")
    if not task or "modulus" not in task:
        raise ValueError(f"{config_path}: no 'task.modulus': not a grokking model")
    split_path = model_dir / SPLIT_FILE
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path}: the run's train/test split is missing")
    with np.load(split_path) as split:
        train_rows, test_rows = split["train"], split["test"]
    p = int(task["modulus"])
    inputs, labels = all_pairs(p)
    return ModularRun(
        model_dir=model_dir,
        modulus=p,
        inputs=torch.from_numpy(inputs),
        labels=torch.from_numpy(labels),
        train_rows=torch.from_numpy(train_rows),
        test_rows=torch.from_numpy(test_rows),
    )


@torch.no_grad()
def pair_maps(
    model: HookedTransformer, run: ModularRun
) -> tuple[Float[np.ndarray, "a b neuron"], Float[np.ndarray, "a b head"]]:
    """Layer-0 MLP neuron activations and the ``=`` → a attention of every head over all (a, b)."""
    p = run.modulus
    names = ("blocks.0.mlp.hook_post", "blocks.0.attn.hook_pattern")
    _, cache = model.run_with_cache(run.inputs, names_filter=lambda n: n in names)
    neurons = cache["blocks.0.mlp.hook_post"][:, -1, :]  # pair neuron
    attention = cache["blocks.0.attn.hook_pattern"][:, :, -1, 0]  # pair head: from '=' to a
    return (
        neurons.reshape(p, p, -1).double().numpy(),
        attention.reshape(p, p, -1).double().numpy(),
    )
