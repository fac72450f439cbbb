"""Where a pretrained model's weights and tokenizer must be for an offline run, and the message
that says so.

mechflow never downloads: a pretrained model is read from the Hugging Face cache or from a local
``save_pretrained`` directory. Both the config check (before any job) and the import step use
this one message, so a researcher sees the same paragraph wherever it stops them.
"""

from __future__ import annotations

import os
from pathlib import Path


def hub_repo(name: str) -> str:
    """The Hugging Face repo TransformerLens reads for an official name (``gpt2-small`` ->
    ``gpt2``); the name itself when TransformerLens does not know it."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return name


def hub_cache() -> Path:
    """The Hugging Face hub cache this process reads (``HF_HUB_CACHE`` / ``HF_HOME`` aware)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def cached_repo(name: str) -> str | None:
    """The hub repo of ``name`` in the local cache, or None. ``name`` itself first (``gpt2`` is
    its own repo), which needs no TransformerLens import (seconds, at every workflow start);
    then :func:`hub_repo`'s (``gpt2-small`` -> ``gpt2``)."""
    if is_cached(name):
        return name
    repo = hub_repo(name)
    return repo if repo != name and is_cached(repo) else None


# A tokenizer's files, in the order they are looked for: the fast tokenizer's one, else a GPT-2
# slow tokenizer's two (older saves; GPT-2's hub repo has all three).
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def tokenizer_files(*, path: str | None = None, repo: str | None = None) -> dict[str, str] | None:
    """Filename -> local file of a pretrained tokenizer, from a ``save_pretrained`` directory
    (``path``) or else the local cache of a hub ``repo``; None when it has none."""

    def find(filename: str) -> str | None:
        if path is not None:
            file = os.path.join(path, filename)
            return file if os.path.isfile(file) else None
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename)
        return found if isinstance(found, str) else None

    for names in TOKENIZER_FILES:
        files = {name: find(name) for name in names}
        if all(files.values()):
            return files
    return None


def weights_help(name: str, key: str | None = None, repo: str | None = None) -> str:
    """One paragraph: what is missing, the cache this machine reads, the exact download command
    for a machine with internet, and the ``path:`` alternative."""
    repo = repo or name
    folder = f"models--{repo.replace('/', '--')}"
    return (
        f"the weights of pretrained model {name!r} (Hugging Face repo {repo!r}) are not on this "
        f"machine, and mechflow never downloads. On a machine with internet run "
        f"`hf download {repo} --include '*.json' '*.txt' '*.safetensors'`, then copy "
        f"~/.cache/huggingface/hub/{folder} into {hub_cache()} here (or point HF_HOME at a "
        f"copy of that cache); or save the model with `save_pretrained` and set "
        f"{f'{key}.path' if key else 'the model’s `path:` in the config'} to that directory."
    )


# The Hugging Face config keys of a model's context length and vocabulary, by family.
CONTEXT_KEYS = ("n_positions", "n_ctx", "max_position_embeddings")
LAYER_KEYS = ("n_layer", "num_hidden_layers", "n_layers")


def local_sizes(name: str, path: str | None) -> dict[str, int] | None:
    """``{"n_ctx", "d_vocab"}`` (and ``n_layers`` where it says) of a pretrained model from its local ``config.json`` (its
    ``path``, else the hub cache of ``name``'s repo), for the checks before any job; None when
    the file is not here or names neither size. Reads no weights and imports no TransformerLens
    for a name that is its own repo (``gpt2``)."""
    import json

    if path is not None:
        file = os.path.join(path, "config.json")
        found = file if os.path.isfile(file) else None
    else:
        repo = cached_repo(name)
        if repo is None:
            return None
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json")
    if not isinstance(found, str):
        return None
    with open(found) as fh:
        hf = json.load(fh)
    n_ctx = next((hf[k] for k in CONTEXT_KEYS if isinstance(hf.get(k), int)), None)
    d_vocab = hf.get("vocab_size")
    if n_ctx is None or not isinstance(d_vocab, int):
        return None
    sizes = {"n_ctx": n_ctx, "d_vocab": d_vocab}
    n_layers = next((hf[k] for k in LAYER_KEYS if isinstance(hf.get(k), int)), None)
    if n_layers is not None:
        sizes["n_layers"] = n_layers
    return sizes


def path_problem(path: str) -> str | None:
    """Why a ``path:`` is not a ``save_pretrained`` directory, or None when it is one."""
    if not os.path.isdir(path):
        return f"{path!r} is not a directory"
    if not os.path.isfile(os.path.join(path, "config.json")):
        return f"{path!r} holds no config.json (not a save_pretrained directory)"
    return None
