"""Model configs, construction, training and loading (the one place that knows TransformerLens)."""

# A model directory's weights file (beside config.json); here, torch-free, for the workflow too.
WEIGHTS_FILE = "model.safetensors"
