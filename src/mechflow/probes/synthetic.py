"""Activations with planted linear readouts, where the right probe accuracy is known.

Each target's class is the argmax of a few planted linear functions of a Gaussian latent;
a signal hook holds the latent (randomly rotated, optionally mixed with noise and scaled), a
noise hook holds none of it. With label noise rate ``e`` (a wrong class, uniformly among the
others), a perfect probe of a pure-signal hook scores about ``1 - e`` and any probe of a
noise hook the majority baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from jaxtyping import Float, Int


class PlantedProbeData(NamedTuple):
    acts: Float[np.ndarray, "hook row d_model"]  # float32
    labels: Int[np.ndarray, "row target"]  # with label noise
    clean_labels: Int[np.ndarray, "row target"]
    groups: Int[np.ndarray, " row"]
    # each hook's planted readout in its own (raw) coordinates; zero for noise hooks
    directions: Float[np.ndarray, "hook target d_model n_class"]


def planted_probe_data(
    *,
    n_rows: int,
    d_model: int,
    n_targets: int,
    n_classes: int,
    signal: Sequence[float],
    label_noise: float = 0.0,
    rows_per_group: int = 1,
    scales: Sequence[float] | None = None,
    class_offset: float = 0.0,
    seed: int = 0,
) -> PlantedProbeData:
    """``signal[h]`` in [0, 1]: the latent's share of hook h's variance (0: a noise hook).

    ``class_offset`` scales random per-class offsets of the planted functions (unbalanced
    classes, so the majority baseline is above chance); ``scales`` multiplies each hook.
    """
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must lie in [0, 1), got {label_noise}")
    if any(not 0 <= s <= 1 for s in signal):
        raise ValueError(f"signal: every share must lie in [0, 1], got {list(signal)}")
    scales = [1.0] * len(signal) if scales is None else list(scales)
    if len(scales) != len(signal):
        raise ValueError(f"scales: {len(scales)} values for {len(signal)} hooks")
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_rows, d_model), dtype=np.float32)  # row d_model
    planted = rng.standard_normal((n_targets, d_model, n_classes)) / np.sqrt(d_model)
    offsets = class_offset * rng.standard_normal((n_targets, n_classes))
    flat = planted.transpose(1, 0, 2).reshape(d_model, n_targets * n_classes).astype(np.float32)
    scores = (latent @ flat).reshape(n_rows, n_targets, n_classes) + offsets
    clean = scores.argmax(-1)  # row target
    flip = rng.random((n_rows, n_targets)) < label_noise
    shifted = (clean + rng.integers(1, n_classes, size=clean.shape)) % n_classes
    labels = np.where(flip, shifted, clean)

    acts = np.empty((len(signal), n_rows, d_model), dtype=np.float32)
    directions = np.zeros((len(signal), n_targets, d_model, n_classes), dtype=np.float32)
    for h, (share, scale) in enumerate(zip(signal, scales, strict=True)):
        rotation, _ = np.linalg.qr(rng.standard_normal((d_model, d_model)))
        rotation = rotation.astype(np.float32)
        noise = rng.standard_normal((n_rows, d_model), dtype=np.float32)
        acts[h] = scale * (np.sqrt(share) * (latent @ rotation) + np.sqrt(1 - share) * noise)
        if share > 0:  # latent ~ x @ rotation.T / scale: the readout is rotation.T @ planted
            directions[h] = np.einsum("ed,tec->tdc", rotation, planted)
    groups = np.arange(n_rows) // max(1, rows_per_group)
    return PlantedProbeData(acts, labels, clean, groups, directions)
