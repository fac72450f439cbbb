"""How well a model does IOI on each split of its evaluation sample: accuracy (the answer is
the argmax over the whole vocabulary), how often logit(IO) > logit(S), the mean logit
difference and its spread, and the same difference on the ABC prompts (near 0: the corruption
removes the answer). Columns: ``model, split, prompts, accuracy, io_over_s, logit_diff,
logit_diff_sd, abc_logit_diff``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(model_dir: Path, prompts: Path, out: Path, *, batch_size: int):
    import numpy as np
    import pandas as pd
    import torch

    from mechflow.analysis.inputs import model_name
    from mechflow.artifacts import write_table
    from mechflow.experiments.ioi.measures import logit_difference
    from mechflow.experiments.ioi.prompt_set import load_prompt_set, select_prompts
    from mechflow.models.build import load_model

    model = load_model(model_dir)
    prompt_set = load_prompt_set(prompts)
    records = []
    for split, drawn in prompt_set.prompts.items():
        rows = np.arange(len(drawn))
        end = drawn.positions["END"]
        at_end, abc_diff = [], []
        with torch.inference_mode():
            for start in range(0, len(drawn), batch_size):
                part = slice(start, start + batch_size)
                logits = model(torch.as_tensor(drawn.tokens[part]))
                at_end.append(logits[np.arange(len(logits)), end[part]])
                corrupted = model(torch.as_tensor(prompt_set.corrupted[split][part]))
                abc_diff.append(logit_difference(select_prompts(drawn, part), "none")(corrupted))
        at_end = torch.cat(at_end)
        diff = at_end[rows, drawn.io] - at_end[rows, drawn.s]
        records.append({
            "split": split, "prompts": len(drawn),
            "accuracy": float((at_end.argmax(-1).numpy() == drawn.io).mean()),
            "io_over_s": float((diff > 0).float().mean()), "logit_diff": float(diff.mean()),
            "logit_diff_sd": float(diff.std()), "abc_logit_diff": float(torch.cat(abc_diff).mean()),
        })  # fmt: skip
    table = pd.DataFrame(records)
    table.insert(0, "model", model_name(model_dir))
    write_table(table, out)
    for r in table.itertuples():
        log.info("%s: accuracy %.3f, logit difference %.2f", r.split, r.accuracy, r.logit_diff)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    add_runtime_flags(parser)
    parser.add_argument("--prompts", required=True, type=Path, help="prompts.npz")
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="accuracy.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
