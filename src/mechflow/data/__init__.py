"""Task generators, token datasets, and text corpora with the BPE tokenizer trained on them
(all local: nothing is downloaded)."""
