"""Find a model's IOI circuit by measurement (mechflow.experiments.ioi.measures.classify_heads)
on the combinations split of its evaluation sample, then evaluate it as Wang et al. (2022) do:

- ``head_classes.csv``: every head's class and the measurements it was found from;
- ``knockouts.csv``: the logit difference with each class mean-ablated (its heads' outputs
  replaced by their mean over the ABC prompts of the same template and prefix), and with none;
- ``faithfulness.csv``: the found circuit (every classified head) kept and all else
  mean-ablated, F(C)/F(M), against ``--random-circuits`` random circuits of the same size.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechflow.runtime import add_runtime_flags
from mechflow.steps import parse_and_run, step_parser

log = logging.getLogger(__name__)


def run(
    model_dir: Path,
    prompts: Path,
    classes_out: Path,
    knockouts_out: Path,
    faithfulness_out: Path,
    *,
    attention_threshold: float,
    share: float,
    min_effect: float,
    random_circuits: int,
    seed: int,
    batch_size: int,
) -> None:
    import pandas as pd
    import torch

    from mechflow.analysis.inputs import model_name
    from mechflow.artifacts import write_table
    from mechflow.experiments.ioi.measures import alignment_groups, classify_heads, logit_difference
    from mechflow.experiments.ioi.prompt_set import load_prompt_set
    from mechflow.models.build import load_model
    from mechflow.patching.circuits import faithfulness, group_means, knockout_score

    model = load_model(model_dir)
    name = model_name(model_dir)
    prompt_set = load_prompt_set(prompts)
    drawn, corrupted = prompt_set.prompts["combinations"], prompt_set.corrupted["combinations"]
    n_pos = int(drawn.positions["END"].max()) + 1
    drawn = type(drawn)(**{**drawn.__dict__, "tokens": drawn.tokens[:, :n_pos]})
    corrupted = corrupted[:, :n_pos]
    found = classify_heads(
        model, drawn, corrupted, attention_threshold=attention_threshold, share=share,
        min_effect=min_effect, batch_size=batch_size, name_ids=prompt_set.name_ids,
    )  # fmt: skip
    write_table(found.heads.assign(model=name)[["model", *found.heads.columns]], classes_out)

    metric, groups = logit_difference(drawn), alignment_groups(drawn)
    means = group_means(model, torch.as_tensor(corrupted), groups)
    tokens = torch.as_tensor(drawn.tokens)
    clean = knockout_score(model, tokens, groups, means, [], metric)
    knocked = [("none", 0, clean)] + [
        (cls, len(heads), knockout_score(model, tokens, groups, means, heads, metric))
        for cls, heads in found.classes.items() if heads
    ]  # fmt: skip
    knockouts = pd.DataFrame(knocked, columns=["ablated", "n_heads", "logit_diff"])
    knockouts["fraction"] = knockouts["logit_diff"] / clean
    knockouts.insert(0, "model", name)
    write_table(knockouts, knockouts_out)

    circuit = [h for heads in found.classes.values() for h in heads]
    result = faithfulness(model, tokens, corrupted, groups, circuit, metric,
                          random_circuits=random_circuits, seed=seed)  # fmt: skip
    row = {
        "model": name, "circuit_size": result["circuit_size"],
        "model_logit_diff": result["model"], "circuit_logit_diff": result["circuit"],
        "faithfulness": result["faithfulness"],
        "random_faithfulness": result["random_faithfulness"],
        "random_faithfulness_sd": result["random_faithfulness_sd"],
        "random_circuits": random_circuits,
        "circuit": " ".join(f"{layer}.{head}" for layer, head in sorted(circuit)),
    }  # fmt: skip
    write_table(pd.DataFrame([row]), faithfulness_out)
    for cls, heads in found.classes.items():
        if heads:
            log.info("%s: %s", cls, ", ".join(f"{layer}.{head}" for layer, head in heads))
    log.info(
        "circuit of %d heads: faithfulness %.3f (random circuits %.3f +- %.3f)",
        len(circuit), row["faithfulness"], row["random_faithfulness"],
        row["random_faithfulness_sd"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    add_runtime_flags(parser)
    parser.add_argument("--prompts", required=True, type=Path, help="prompts.npz")
    parser.add_argument("--attention-threshold", required=True, type=float)
    parser.add_argument("--share", required=True, type=float)
    parser.add_argument("--min-effect", required=True, type=float)
    parser.add_argument("--random-circuits", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--classes-out", required=True, type=Path, help="head_classes.csv")
    parser.add_argument("--knockouts-out", required=True, type=Path, help="knockouts.csv")
    parser.add_argument("--faithfulness-out", required=True, type=Path, help="faithfulness.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()
