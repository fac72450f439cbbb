"""What a researcher sees at the console: targets per experiment and model, and config errors
as one line per problem (no traceback, no schema dump), before any job."""

import re

import pytest
import yaml
from workflow_helpers import copy_workflow, snakemake


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("console"))


def write_config(workflow_copy, name, mutate):
    cfg = yaml.safe_load((workflow_copy / "config/test.yaml").read_text())
    mutate(cfg)
    path = workflow_copy / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path.name


def planned_rules(output: str) -> dict[str, int]:
    stats = output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def test_every_experiment_and_unit_is_a_listed_target(workflow_copy):
    listed = snakemake(
        workflow_copy, "--list-target-rules", "--configfile", "config/test.yaml"
    ).stdout.split()
    for name in (
        "all", "induction", "induction_attn_only_1l", "induction_attn_only_2l", "grokking",
        "grokking_modadd_37", "superposition", "superposition_n5_m2", "saes",
        "saes_gpt_2l", "saes_n5_m2", "language_model", "language_model_gpt_2l",
        "induction_gpt_2l",
    ):  # fmt: skip
        assert name in listed, (name, listed)


def test_an_experiment_target_plans_only_that_experiment(workflow_copy):
    out = snakemake(workflow_copy, "-n", "grokking", "--configfile", "config/test.yaml").stdout
    rules = planned_rules(out)
    assert rules["train_grokking_model"] == 1 and rules["grokking"] == 1
    assert not {"train_model", "train_sae", "train_toy_model", "make_dataset"} & set(rules)


def test_a_model_target_plans_only_that_model(workflow_copy):
    out = snakemake(
        workflow_copy, "-n", "--configfile", "config/test.yaml", "--", "induction_attn_only_1l"
    ).stdout
    rules = planned_rules(out)
    assert rules["train_model"] == 1  # attn_only_1l only
    assert "plot_composition" not in rules  # a 2-layer figure
    assert "train_sae" not in rules and "train_grokking_model" not in rules


def test_config_problems_are_one_line_each_all_at_once(workflow_copy):
    def three_wrong(c):
        c["modles"] = c.pop("models")
        c["datasets"]["induction_heldout"]["seq_len"] = "x"
        c["experiments"]["saes"]["language_model"]["dashbord"] = "topk_8"

    name = write_config(workflow_copy, "three_wrong", three_wrong)
    proc = snakemake(workflow_copy, "-n", "--configfile", name, check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == f"invalid config ({name}): 3 problems"
    assert lines[1:3] == [
        "  - modles: unknown key (did you mean 'models'?); "
        "allowed: datasets, models, activations, experiments",
        "  - datasets.induction_heldout.seq_len: 'x' is not an integer; allowed: an integer >= 3",
    ]
    assert lines[3].startswith(
        "  - experiments.saes.language_model.dashbord: unknown key (did you mean 'dashboard'?)"
    )
    assert len(lines) == 4  # no schema, no config, no traceback


def test_a_cross_key_problem_has_no_traceback(workflow_copy):
    name = write_config(
        workflow_copy,
        "too_long",
        lambda c: c["datasets"]["repeated_random"].update(half_len=40),
    )
    proc = snakemake(workflow_copy, "--cores", "1", "--configfile", name, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == f"invalid config ({name}): 2 problems"
    assert all(line.startswith("  - datasets.repeated_random.half_len: 40 ") for line in lines[1:])
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr
    assert not (workflow_copy / "results").exists()


def test_a_missing_pretrained_path_is_refused_and_an_unused_model_warned(workflow_copy):
    def pretrained(c):
        c["models"]["gpt2"] = {"source": "pretrained", "name": "gpt2", "path": "weights/gpt2"}
        c["experiments"]["induction"]["models"].append("gpt2")

    name = write_config(workflow_copy, "pretrained", pretrained)
    proc = snakemake(workflow_copy, "-n", "--configfile", name, check=False)
    assert proc.returncode == 1
    assert "  - models.gpt2.path: 'weights/gpt2' is not a directory" in proc.stderr

    def unused(c):
        c["models"]["gpt2"] = {"source": "pretrained", "name": "gpt2"}

    name = write_config(workflow_copy, "unused", unused)
    proc = snakemake(workflow_copy, "-n", "--configfile", name)
    assert (
        "mechflow: warning: models.gpt2: declared, but no enabled experiment uses it" in proc.stderr
    )
    assert "import_pretrained" not in proc.stdout
