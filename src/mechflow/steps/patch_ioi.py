"""One shard of a model's IOI patching sweeps (mechflow.experiments.ioi.sweeps): the layers of
shard ``--shard`` of ``--shards``, every row labelled with both, so that ``gather_sweep``
can check it has them all. The shard file is written atomically: a killed shard leaves none.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(model_dir: Path, prompts: Path, out: Path, *, shard: int, shards: int,
        batch_size: int) -> None:  # fmt: skip
    from mechflow.analysis.inputs import model_name
    from mechflow.artifacts import write_table
    from mechflow.experiments.ioi.prompt_set import load_prompt_set
    from mechflow.experiments.ioi.sweeps import ioi_sweep
    from mechflow.models.build import load_model
    from mechflow.patching.sweeps import label_shard, shard_layers

    model = load_model(model_dir)
    layers = shard_layers(model.cfg.n_layers, shards, shard)
    table = ioi_sweep(model, load_prompt_set(prompts), layers, batch_size=batch_size)
    table.insert(0, "model", model_name(model_dir))
    write_table(label_shard(table, shard, shards), out)
    log.info("shard %d of %d: layers %s, %d rows", shard, shards, layers, len(table))


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    add_runtime_flags(parser)
    parser.add_argument("--prompts", required=True, type=Path, help="prompts.npz")
    parser.add_argument("--shard", required=True, type=int, help="0 to shards - 1")
    parser.add_argument("--shards", required=True, type=int)
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="the shard's table (.csv)")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
