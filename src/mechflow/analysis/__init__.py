"""Analyses of trained models: head scores, losses, ablations, weight-based circuit scores.

Modules are pure functions on tensors and models (no CLI, no config files); the step modules in
``mechflow.steps`` wire them to artifacts. Nothing here imports TransformerLens at import time.
"""
