"""Model configs, construction, training and loading (the one place that knows TransformerLens)."""
