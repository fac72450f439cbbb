"""mechflow: mechanistic-interpretability papers as one reproducible Snakemake workflow."""

__version__ = "0.1.0"
