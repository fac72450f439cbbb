"""Progress measures of a grokking run across its checkpoints (Nanda et al. 2023, section 5).

For every checkpoint in ``[--first-epoch, --last-epoch]``: train and test loss and accuracy,
restricted loss (only the key frequencies' cos/sin(w(a+b)) directions of the logits, on all
pairs), excluded loss (those directions removed, on the training pairs) and the weight norm.
Key frequencies come from the final model (``key_frequencies.csv``). Writes
``progress.csv`` (model, epoch, metric, value) and ``phases.csv`` (model, phase, start_epoch,
end_epoch): memorisation, circuit formation and cleanup, with boundaries read from the measures.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from mechflow.artifacts import write_table
from mechflow.experiments.grokking.inputs import read_run
from mechflow.experiments.grokking.phases import phase_boundaries, phase_table
from mechflow.experiments.grokking.progress_measures import measure_checkpoint
from mechflow.experiments.grokking.workflow import MIN_PROGRESS_CHECKPOINTS
from mechflow.models.checkpoints import iter_checkpoint_models
from mechflow.plots.style import check_columns, read_figure_table
from mechflow.progress import Progress
from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def select_checkpoints(
    available: list[tuple[int, Path]], first: int, last: int | None, source: str
) -> list[tuple[int, Path]]:
    """The checkpoints in range; refuse a range they do not cover."""
    epochs = [e for e, _ in available]
    last = epochs[-1] if last is None else last
    if first > last:
        raise ValueError(f"--first-epoch {first} > --last-epoch {last}")
    chosen = [(e, p) for e, p in available if first <= e <= last]
    if first not in epochs or last not in epochs or len(chosen) < MIN_PROGRESS_CHECKPOINTS:
        raise ValueError(
            f"{source}: checkpoints {epochs[:3]}...{epochs[-3:]} do not cover "
            f"epochs [{first}, {last}] (need both ends and at least {MIN_PROGRESS_CHECKPOINTS} in range)"
        )
    return chosen


def run(
    model_dir: Path,
    key_table: Path,
    progress_out: Path,
    phases_out: Path,
    *,
    first_epoch: int,
    last_epoch: int | None = None,
) -> pd.DataFrame:
    keys_df = read_figure_table(key_table)
    check_columns(keys_df, ["frequency"], str(key_table))
    keys = [int(k) for k in keys_df["frequency"]]
    task = read_run(model_dir)
    chosen = select_checkpoints(task.checkpoints(), first_epoch, last_epoch, str(model_dir))
    rows = []
    models = iter_checkpoint_models(model_dir, chosen)
    bar = Progress(
        models, total=len(chosen), desc="progress measures", unit="checkpoint", logger=log
    )
    for epoch, model in bar:
        measures = measure_checkpoint(
            model, task.inputs, task.labels, task.train_rows, task.test_rows, keys
        )
        rows += [{"epoch": epoch, "metric": k, "value": v} for k, v in measures.items()]
        bar.set_postfix(epoch=epoch, test_loss=measures["test_loss"])
    progress = pd.DataFrame(rows)
    wide = progress.pivot(index="epoch", columns="metric", values="value")
    bounds = phase_boundaries(wide)
    phases = phase_table(bounds, chosen[-1][0])
    name = model_dir.name
    progress.insert(0, "model", name)
    phases.insert(0, "model", name)
    write_table(progress, progress_out)
    write_table(phases, phases_out)
    log.info(
        "key frequencies %s; memorised at %s, cleanup from %s, grokked at %s",
        keys,
        *(("never" if math.isnan(v) else int(v)) for v in bounds.values()),
    )
    return progress


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    parser.add_argument(
        "--key-frequencies", dest="key_table", required=True, type=Path, help="key_frequencies.csv"
    )
    parser.add_argument("--first-epoch", required=True, type=int)
    parser.add_argument("--last-epoch", type=int, default=None, help="default: last checkpoint")
    add_runtime_flags(parser)
    parser.add_argument("--out", dest="progress_out", required=True, type=Path, help="progress.csv")
    parser.add_argument("--phases", dest="phases_out", required=True, type=Path, help="phases.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
