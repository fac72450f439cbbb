"""Linear probes: multinomial logistic readouts of many hooks x many targets, trained at once.

``mechflow.probes.config`` imports no torch (the workflow validates configs with it); the rest
is imported from its modules: ``train`` (the sweep, early stopping, the results table),
``model`` (the packed weights and their AdamW step), ``rows`` (data order, memory bound,
standardisation), ``sources`` (arrays and activation stores), ``split`` (by group),
``linear`` (the probes and their predictions), ``io`` (safetensors + cfg.json) and
``synthetic`` (planted directions, for tests and benchmarks).
"""

from mechflow.probes.config import ProbeConfig

__all__ = ["ProbeConfig"]
