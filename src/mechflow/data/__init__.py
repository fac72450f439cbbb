"""Task generators and token datasets (all generated locally: nothing is downloaded)."""
