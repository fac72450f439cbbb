"""Indirect object identification (Wang et al. 2022): prompts, a model trained on them here, and
its circuit found with the patching engine (``mechflow.patching``)."""
