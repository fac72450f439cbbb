"""Config problems come one line each, all at once, naming the key that is wrong."""

import copy
from pathlib import Path

import pytest
import yaml

from mechflow.config_problems import did_you_mean, read_numbers
from mechflow.wiring import Workflow, config_problems, format_problems

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "workflow/schemas"


@pytest.fixture(scope="module")
def test_config():
    return yaml.safe_load((ROOT / "config/test.yaml").read_text())


def problems_of(config, mutate):
    bad = copy.deepcopy(config)
    mutate(bad)
    return config_problems(bad, SCHEMAS)[0]


def test_a_misspelt_top_level_key_is_one_line_with_a_guess(test_config):
    lines = problems_of(test_config, lambda c: c.update(modles=c.pop("models")))
    assert lines == [
        "modles: unknown key (did you mean 'models'?); "
        "allowed: datasets, models, activations, experiments"
    ]


def test_a_misspelt_nested_key_names_its_path(test_config):
    lines = problems_of(
        test_config, lambda c: c["models"]["attn_only_2l"]["training"].update(stpes=5)
    )
    assert len(lines) == 1
    assert lines[0].startswith(
        "models.attn_only_2l.training.stpes: unknown key (did you mean 'steps'?); "
        "allowed: dataset, steps, batch_size, lr,"
    )


def test_every_schema_error_is_listed_at_once(test_config):
    def two_wrong(c):
        c["models"]["attn_only_2l"]["training"]["steps"] = 0
        c["datasets"]["sae_train"]["seq_len"] = "x"
        c["experiments"]["superposition"]["toy_models"]["n5_m2"]["steps"] = 0

    assert problems_of(test_config, two_wrong) == [
        "datasets.sae_train.seq_len: 'x' is not an integer; allowed: an integer >= 3",
        "models.attn_only_2l.training.steps: 0 is less than the minimum of 1; "
        "allowed: an integer >= 1",
        "experiments.superposition.toy_models.n5_m2.steps: 0 is less than the minimum of 1; "
        "allowed: an integer >= 1",
    ]


def test_a_bad_enum_value_gets_a_guess(test_config):
    lines = problems_of(test_config, lambda c: c["activations"].update(dtype="float23"))
    assert lines == [
        "activations.dtype: 'float23' is not allowed (did you mean 'float32'?); "
        "allowed: 'float32', 'float16'"
    ]


def test_a_missing_required_key_is_named(test_config):
    lines = problems_of(test_config, lambda c: c["datasets"]["sae_train"].pop("seq_len"))
    assert lines == ["datasets.sae_train.seq_len: required key is missing"]


def test_numbers_in_scientific_notation_are_numbers(test_config):
    """PyYAML reads `3e-3` and `1.0e3` as strings; the config reads them as numbers."""
    text = (ROOT / "config/test.yaml").read_text().replace("lr: 0.003", "lr: 3e-3")
    text = text.replace("steps: 2000,", "steps: 2e3,")
    config = yaml.safe_load(text)
    assert config["models"]["attn_only_2l"]["training"]["lr"] == "3e-3"  # what YAML 1.1 gives
    assert config_problems(config, SCHEMAS)[0] == []
    training = config["models"]["attn_only_2l"]["training"]
    assert training["lr"] == 0.003 and isinstance(training["lr"], float)
    assert training["steps"] == 2000 and isinstance(training["steps"], int)
    assert config["experiments"]["saes"]["defaults"]["lr"] == 0.003


def test_read_numbers_keeps_names_and_hooks():
    value = {"a": ["1e5", "1.5e-2", "e5", "blocks.1e2", "x1e3"], "b": {"c": "2E+3"}}
    assert read_numbers(value) == {
        "a": [100000, 0.015, "e5", "blocks.1e2", "x1e3"],
        "b": {"c": 2000},
    }


def test_an_unknown_name_lists_the_known_ones(test_config):
    lines = problems_of(
        test_config, lambda c: c["experiments"]["induction"].update(eval_dataset="repeated_randm")
    )
    assert lines == [
        "experiments.induction.eval_dataset: unknown dataset 'repeated_randm' "
        "(did you mean 'repeated_random'?); "
        "known: induction_train, induction_heldout, sae_train, repeated_random"
    ]


def test_an_unknown_experiment_gets_a_guess(test_config):
    lines = problems_of(
        test_config, lambda c: c["experiments"].update(induciton=c["experiments"].pop("induction"))
    )
    assert lines == [
        "experiments.induciton: unknown experiment (did you mean 'induction'?); "
        "registered: grokking, induction, saes, superposition"
    ]


def test_a_too_long_dataset_names_its_own_key(test_config):
    """The eval dataset is too long for the models: the key to change is the dataset's."""
    lines = problems_of(test_config, lambda c: c["datasets"]["repeated_random"].update(half_len=40))
    assert lines and all(
        line.startswith("datasets.repeated_random.half_len: 40 ") for line in lines
    )
    assert "models.attn_only_2l.architecture.n_ctx=64" in lines[-1]
    assert "experiments.induction.eval_dataset" in lines[-1]


def test_format_problems_counts_and_lists():
    text = format_problems(["a.b: wrong", "c: missing"], "my.yaml")
    assert text.splitlines() == [
        "invalid config (my.yaml): 2 problems",
        "  - a.b: wrong",
        "  - c: missing",
    ]


def test_did_you_mean_stays_quiet_without_a_close_match():
    assert did_you_mean("zzz", ["models", "datasets"]) == ""


# --- pretrained models and unused models -------------------------------------------------------


def with_pretrained(config, **spec):
    config["models"]["gpt2"] = {"source": "pretrained", "name": "gpt2", **spec}
    config["experiments"]["induction"]["models"].append("gpt2")


def test_a_missing_pretrained_path_is_refused_before_any_job(test_config):
    lines = problems_of(test_config, lambda c: with_pretrained(c, path="/nonexistent/gpt2"))
    assert lines == [
        "models.gpt2.path: '/nonexistent/gpt2' is not a directory; "
        "give a directory saved with save_pretrained"
    ]


def test_a_pretrained_path_without_config_json_is_refused(test_config, tmp_path):
    lines = problems_of(test_config, lambda c: with_pretrained(c, path=str(tmp_path)))
    assert lines and "holds no config.json" in lines[0]
    (tmp_path / "config.json").write_text("{}")
    assert problems_of(test_config, lambda c: with_pretrained(c, path=str(tmp_path))) == []


def test_missing_pretrained_weights_say_where_to_put_them(test_config, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # no results/models/gpt2 here
    lines = problems_of(test_config, with_pretrained)
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("models.gpt2: the weights of pretrained model 'gpt2'")
    assert "hf download gpt2" in line and str(tmp_path / "hub") in line
    assert "models.gpt2.path" in line

    # in the cache (the layout huggingface_hub writes): no problem
    repo = tmp_path / "hub/models--gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text("abc123")
    (repo / "snapshots/abc123").mkdir(parents=True)
    (repo / "snapshots/abc123/config.json").write_text("{}")
    assert problems_of(test_config, with_pretrained) == []


def test_an_imported_pretrained_model_needs_no_cache(test_config, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results/models/gpt2").mkdir(parents=True)
    (tmp_path / "results/models/gpt2/model.safetensors").write_bytes(b"")
    assert problems_of(test_config, with_pretrained) == []


def test_a_model_nothing_uses_is_a_warning(test_config):
    config = copy.deepcopy(test_config)
    config["models"]["spare"] = copy.deepcopy(config["models"]["attn_only_1l"])
    config["models"]["gpt2"] = {"source": "pretrained", "name": "gpt2"}
    problems, warnings = config_problems(config, SCHEMAS)
    assert problems == []  # an unused pretrained model is not looked up
    assert warnings == [
        "models.spare: declared, but no enabled experiment uses it (nothing is trained for it)",
        "models.gpt2: declared, but no enabled experiment uses it (nothing is imported for it)",
    ]
    assert Workflow(config).used_models() == ["attn_only_1l", "attn_only_2l"]


def test_a_validation_loss_needs_a_text_dataset(test_config):
    lines = problems_of(
        test_config, lambda c: c["models"]["attn_only_2l"]["training"].update(eval_every=100)
    )
    assert lines == [
        "models.attn_only_2l.training.eval_every: needs a held-out split, and dataset "
        "'induction_train' is of kind 'repeated_spans'; allowed: a dataset of kind text (it has "
        "a validation split), or null"
    ]


def test_a_model_on_text_reads_its_validation_split(test_config, tmp_path):
    from types import SimpleNamespace

    config = copy.deepcopy(test_config)
    (tmp_path / "a.txt").write_text("some text\n" * 50)
    (tmp_path / "b.txt").write_text("more text\n" * 50)
    config["datasets"]["corpus"] = {
        "kind": "text", "source": str(tmp_path), "pattern": "*.txt", "seq_len": 64,
        "d_vocab": 128, "validation_fraction": 0.5,
    }  # fmt: skip
    training = config["models"]["attn_only_2l"]["training"]
    training.update(dataset="corpus", eval_every=100)
    problems = [p for p in config_problems(config, SCHEMAS)[0] if "validation" in p]
    assert problems == [] or all("corpus" in p for p in problems), problems
    workflow = Workflow(config)
    wildcards = SimpleNamespace(model="attn_only_2l")
    assert workflow.validation_dataset(wildcards) == ["results/datasets/corpus.validation.npy"]
    assert workflow.validation_flag(wildcards) == (
        "--validation-tokens results/datasets/corpus.validation.npy"
    )
    plain = copy.deepcopy(test_config)
    assert config_problems(plain, SCHEMAS)[0] == []  # fills the schema's defaults in
    assert Workflow(plain).validation_flag(wildcards) == ""
