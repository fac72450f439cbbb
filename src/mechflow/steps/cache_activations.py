"""Run a model once over a token dataset and cache the requested hooks into one zarr v3 store.

The store (a directory) holds one array per full TransformerLens hook name plus ``tokens``, and
provenance in its attrs; ``complete: true`` is written last. Rerunning after a kill resumes an
incomplete store with matching provenance; a complete matching store is left as it is. The
store's identity is its content (model, dataset, hooks, dtype, compression): ``--batch-size``
is a machine setting (speed and memory) and rerunning with another one redoes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.artifacts import file_sha256
from mechflow.models.config import HOOK_NAME_PATTERN
from mechflow.runtime import add_runtime_flags, pick_device, seed_everything
from mechflow.steps import parse_and_run, step_parser
from mechflow.store.writer import COMPRESSIONS, DTYPES

log = logging.getLogger(__name__)

# Sequences per forward pass when none is given; the workflow passes the cache_activations
# rule's `batch_size` resource (set per machine in the profile), whose default is this value.
DEFAULT_BATCH_SIZE = 64


def run(
    model_dir: Path,
    tokens_path: Path,
    hooks: list[str],
    out: Path,
    *,
    dtype: str,
    compression: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    from mechflow.data.tokens import load_tokens
    from mechflow.models.build import load_model, model_fingerprint
    from mechflow.store.writer import write_activation_store

    bad = [h for h in hooks if not HOOK_NAME_PATTERN.match(h)]
    if bad:
        raise ValueError(
            f"--hook {bad}: not full TransformerLens hook names (e.g. blocks.0.hook_resid_post)"
        )
    if not tokens_path.is_file():
        raise FileNotFoundError(f"--tokens: no such file: {tokens_path}")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"--model-dir: no such directory: {model_dir}")
    seed_everything(seed)
    tokens = load_tokens(tokens_path)
    provenance = {
        "model": model_dir.name,
        "model_dir": str(model_dir),
        "model_hash": model_fingerprint(model_dir),
        "dataset": str(tokens_path),
        "dataset_sha256": file_sha256(tokens_path),
        "seed": seed,
    }
    model = load_model(model_dir, device=pick_device(device))
    return write_activation_store(
        model,
        tokens,
        out,
        hooks,
        batch_size=batch_size,
        chunk_size=chunk_size,
        dtype=dtype,
        compression=compression,
        provenance=provenance,
        progress=progress,
    )


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    parser.add_argument(
        "--tokens", dest="tokens_path", required=True, type=Path, help="(seq, pos) int .npy"
    )
    parser.add_argument(
        "--hook", required=True, action="append", dest="hooks", help="full hook name; repeatable"
    )
    parser.add_argument("--dtype", required=True, choices=sorted(DTYPES))
    parser.add_argument("--compression", required=True, choices=COMPRESSIONS)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="sequences per forward pass: speed and memory only, not part of the store's "
        f"identity (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="sequences per zarr chunk of a new store, any size (default: ~16 MiB chunks); "
        "layout only, a resumed store keeps its own",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out", required=True, type=Path, help="the .zarr store directory")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
