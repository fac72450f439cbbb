"""OthelloGPT (Li et al. 2023, Nanda 2023): a world model probed, edited and attributed."""
