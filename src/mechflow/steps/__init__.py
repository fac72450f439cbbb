"""Step modules: one per Snakemake rule, each runnable as ``python -m mechflow.steps.<rule>``."""
