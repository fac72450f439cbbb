"""Causal interventions on a HookedTransformer, batched: activation patching (``activation``),
path patching (``path``), attribution and edge attribution patching (``attribution``), with
metrics that read only the logits they need (``metrics``).

Patching answers "which activations carry the information that changes the output?": run a
corrupted prompt, put one activation of the clean run back, and see how much of the clean
output returns. TransformerLens's ``patching`` module runs the whole model once per patched
index; here many patches share one forward pass, and no layer before the patch is recomputed.
"""

from mechflow.patching.activation import activation_patching, patch_kinds
from mechflow.patching.attribution import (
    attribution_patching,
    attribution_vs_patching,
    edge_attribution_patching,
)
from mechflow.patching.metrics import LogitDifference, normalised
from mechflow.patching.path import Receiver, path_patching

__all__ = [
    "LogitDifference",
    "Receiver",
    "activation_patching",
    "attribution_patching",
    "attribution_vs_patching",
    "edge_attribution_patching",
    "normalised",
    "patch_kinds",
    "path_patching",
]
