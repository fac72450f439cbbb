"""The config is validated (schema, then cross-key checks) with messages that name the bad key."""

import copy
from pathlib import Path

import pytest
import yaml

from mechflow.wiring import ConfigError, Workflow, checkpoint_steps, expand_hooks, validate_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "workflow/schemas"


def validate(config):
    problems = validate_config(config, SCHEMAS)
    assert problems == [], problems


def check_config(config):
    Workflow(config).check()


def load(name):
    return yaml.safe_load((ROOT / "config" / name).read_text())


def grokking_run(config):
    return config["experiments"]["grokking"]["runs"]["modadd_113"]


@pytest.fixture
def config():
    return load("config.yaml")


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = load(name)
    validate(cfg)
    check_config(cfg)


def test_schema_fills_defaults(config):
    del config["activations"]["dtype"]
    validate(config)
    assert config["activations"]["dtype"] == "float32"
    assert config["datasets"]["repeated_random"].get("spans_per_seq") is None


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["models"]["attn_only_2l"]["architecture"].update(d_model=-4), "d_model"),
        (lambda c: c["models"]["attn_only_2l"]["architecture"].update(d_modle=4), "d_modle"),
        (lambda c: c["models"].update(bad={"source": "trained"}), "architecture"),
        (lambda c: c["models"].update(gpt2={"source": "pretrained"}), "name"),
        (lambda c: c["activations"].update(dtype="float64"), "float64"),
        (
            lambda c: c["activations"]["extra_hooks"].update(attn_only_2l=["blocks.0.resid"]),
            "blocks.0.resid",
        ),
        (lambda c: c.update(unknown_section={}), "unknown_section"),
        (lambda c: grokking_run(c).update(train_fraction=1.5), "1.5"),
        (
            lambda c: c["experiments"]["saes"]["language_model"]["sweeps"].update(relu=[0, 1]),
            "sweeps",
        ),
        (
            lambda c: c["experiments"]["superposition"]["toy_models"]["n20_m5"].update(
                feature_probability_range=[0.0, 1.0]
            ),
            "0.0",
        ),
        (lambda c: grokking_run(c).update(train_fraction=0), "train_fraction"),
        (lambda c: grokking_run(c)["training"].update(epoch=10), "epoch"),
    ],
)
def test_schema_rejects_bad_values_naming_them(config, mutate, key):
    mutate(config)
    problems = validate_config(config, SCHEMAS)
    assert problems and any(key in line for line in problems), problems


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: c["models"]["attn_only_2l"]["training"].update(dataset="nope"),
            "models.attn_only_2l.training.dataset: unknown dataset 'nope'",
        ),
        (lambda c: c["models"]["attn_only_2l"]["architecture"].update(n_ctx=32), "n_ctx=32"),
        (lambda c: c["models"]["attn_only_2l"]["architecture"].update(d_vocab=100), "d_vocab=100"),
        (
            lambda c: c["activations"]["extra_hooks"].update(
                attn_only_2l=["blocks.7.hook_resid_post"]
            ),
            "activations.extra_hooks.attn_only_2l: hook 'blocks.7.hook_resid_post' matches no hook",
        ),
        (
            lambda c: c["activations"]["extra_hooks"].update(
                attn_only_2l=["blocks.0.mlp.hook_post"]
            ),
            "blocks.0.mlp.hook_post",
        ),
        (
            lambda c: c["activations"]["extra_hooks"].update(ghost=["blocks.0.hook_resid_post"]),
            "unknown model 'ghost'",
        ),
        (
            lambda c: c["experiments"]["induction"].update(models=["attn_only_2l", "missing"]),
            "unknown model 'missing'",
        ),
        (
            lambda c: c["experiments"]["induction"].update(eval_dataset="induction_heldout"),
            "must be of kind repeated_random",
        ),
        (lambda c: c["experiments"]["induction"].update(icl_late=64), "icl_late"),
        (
            lambda c: c["datasets"]["induction_train"].update(span_len=[4, 40]),
            "datasets.induction_train.span_len",
        ),
        (
            lambda c: c["models"]["attn_only_2l"].update(
                architecture={**c["models"]["attn_only_2l"]["architecture"], "attn_only": False}
            ),
            "d_mlp",
        ),
        (
            lambda c: c["experiments"]["superposition"]["toy_models"]["n20_m5"].update(d_hidden=20),
            "experiments.superposition.toy_models.n20_m5.d_hidden: 20 must be < n_features=20",
        ),
        (
            lambda c: c["experiments"]["superposition"]["toy_models"]["n20_m5"].update(
                feature_probability=[0.5]
            ),
            "give exactly one of feature_probability, feature_probability_range",
        ),
        (
            lambda c: c["experiments"]["saes"]["language_model"].update(dashboard="topk_99"),
            "experiments.saes.language_model.dashboard: 'topk_99' is not in the sweep",
        ),
        (
            lambda c: c["experiments"]["saes"]["language_model"].update(
                hooks=["blocks.9.hook_resid_post"]
            ),
            "experiments.saes.language_model.hooks[0]: models.gpt_4l has no hook "
            "'blocks.9.hook_resid_post'",
        ),
        (
            lambda c: c["experiments"]["saes"]["defaults"].update(expansion_factor=None, d_sae=8),
            "k=16 exceeds d_sae=8",
        ),
        (
            lambda c: c["experiments"]["saes"]["defaults"].update(learning_rate=0.1),
            "unknown key(s) ['learning_rate']",
        ),
        (
            lambda c: c["experiments"]["saes"]["toy"].update(model="n99"),
            "experiments.saes.toy.model: unknown toy model 'n99'",
        ),
        (
            lambda c: c["experiments"]["saes"]["toy"]["sae"].update(k=50),
            "experiments.saes.toy.sae: sae.k: k=50 exceeds d_sae=40",
        ),
        (
            lambda c: grokking_run(c).update(modulus=111),
            "experiments.grokking.runs.modadd_113: modulus must be an odd prime",
        ),
        (
            lambda c: grokking_run(c)["training"].update(checkpoint_every=1000),
            "experiments.grokking.runs.modadd_113.training: checkpoints (3 in range) do not cover",
        ),
        (
            lambda c: grokking_run(c).update(progress_range=[0, 1510]),
            "progress_range: [0, 1510] is not within the 1500 training epochs",
        ),
        (
            lambda c: c["experiments"].update(brackets={}),
            "experiments.brackets: unknown experiment",
        ),
    ],
)
def test_cross_checks_name_the_bad_key(config, mutate, message):
    bad = copy.deepcopy(config)
    mutate(bad)
    validate(bad)
    with pytest.raises(ConfigError) as err:
        check_config(bad)
    assert message in str(err.value)


def test_checkpoint_steps_include_start_and_end():
    assert checkpoint_steps({"steps": 250, "checkpoint_every": 100}) == [0, 100, 200, 250]
    assert checkpoint_steps({"steps": 10, "checkpoints": [5]}) == [5]


def test_expand_hooks():
    names = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]
    assert expand_hooks(["blocks.*.attn.hook_pattern"], names) == names[:2]
    with pytest.raises(ValueError, match="matches no hook"):
        expand_hooks(["blocks.2.*"], names)


def test_a_grokking_only_config_is_valid():
    """Presets may hold one experiment: datasets and models default to empty."""
    cfg = load("presets/grokking_paper.yaml")
    validate(cfg)
    check_config(cfg)
    assert cfg["datasets"] == {} and cfg["models"] == {}
    run = cfg["experiments"]["grokking"]["runs"]["paper_p113"]
    assert run["modulus"] == 113 and run["architecture"]["d_model"] == 128


def test_a_grokking_run_may_share_a_model_name(config):
    """Runs live under results/grokking/models/, so a run named like a shared model is fine."""
    runs = config["experiments"]["grokking"]["runs"]
    runs["attn_only_2l"] = runs.pop("modadd_113")
    validate(config)
    check_config(config)
    targets = Workflow(config).targets()
    assert "results/grokking/attn_only_2l/checks.csv" in targets


def test_a_text_model_is_analysed_as_a_language_model_and_for_induction(config):
    validate(config)
    check_config(config)
    targets = Workflow(config).targets()
    for name in ("loss_curve", "logit_lens", "logit_attribution"):
        assert f"results/figures/language_model/gpt_4l/{name}.png" in targets
    for name in ("losses", "samples", "logit_lens"):
        assert f"results/language_model/gpt_4l/{name}.html" in targets
    assert "results/figures/induction/gpt_4l/phase_change.png" in targets
    wiring = Workflow(config).experiments["induction"]
    assert wiring.model_setting("gpt_4l", "eval_dataset") == "repeated_random_text"
    assert wiring.model_setting("attn_only_2l", "eval_dataset") == "repeated_random"


def test_a_pretrained_language_model_has_no_loss_curve(config):
    config["models"]["gpt2_small"] = {"source": "pretrained", "name": "gpt2"}
    section = config["experiments"]["language_model"]
    section["models"] = ["gpt2_small"]
    section["eval_datasets"] = {"gpt2_small": "stdlib_text"}
    validate(config)
    wiring = Workflow(config).experiments["language_model"]
    assert wiring.figures("gpt2_small") == ["logit_lens", "logit_attribution"]
    assert wiring.text_dataset("gpt2_small") == "stdlib_text"


def test_the_othello_paper_preset_is_valid_at_the_papers_shape():
    cfg = load("presets/othello_paper.yaml")
    validate(cfg)
    check_config(cfg)
    arch = cfg["models"]["othello_8l"]["architecture"]
    assert (arch["n_layers"], arch["d_model"], arch["n_heads"]) == (8, 512, 8)
    assert cfg["datasets"]["othello_train"]["d_vocab"] == arch["d_vocab"] == 61
    assert cfg["models"]["othello_8l"]["training"]["objective"] == "next_token"
