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
        c["datasets"]["induction_heldout"]["seq_len"] = "x"
        c["experiments"]["superposition"]["toy_models"]["n5_m2"]["steps"] = 0

    assert problems_of(test_config, two_wrong) == [
        "datasets.induction_heldout.seq_len: 'x' is not an integer; allowed: an integer >= 3",
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
    lines = problems_of(test_config, lambda c: c["datasets"]["induction_heldout"].pop("seq_len"))
    assert lines == ["datasets.induction_heldout.seq_len: required key is missing"]


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
        "known: induction_train, induction_heldout, repeated_random, stdlib_text, "
        "stdlib_sae_train, stdlib_heldout, repeated_random_text, ioi_train, othello_train, othello_heldout"
    ]


def test_an_unknown_experiment_gets_a_guess(test_config):
    lines = problems_of(
        test_config, lambda c: c["experiments"].update(induciton=c["experiments"].pop("induction"))
    )
    assert lines == [
        "experiments.induciton: unknown experiment (did you mean 'induction'?); "
        "registered: grokking, induction, ioi, language_model, othello, saes, superposition"
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
    assert Workflow(config).used_models() == [
        "attn_only_1l", "attn_only_2l", "gpt_2l", "ioi_2l", "othello_2l", "othello_2l_init",
    ]  # fmt: skip


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


# --- text models: the language-model experiment, subsets and per-model induction settings ----


def test_a_language_model_must_be_a_model_of_text(test_config):
    lines = problems_of(
        test_config, lambda c: c["experiments"]["language_model"].update(models=["attn_only_2l"])
    )
    assert lines == [
        "experiments.language_model.models[0]: models.attn_only_2l is trained on dataset "
        "'induction_train' of kind 'repeated_spans'; allowed: a model trained on a dataset of "
        "kind text"
    ]


def test_a_pretrained_language_model_needs_a_text_dataset_in_its_tokenizer(test_config):
    def pretrained(c):
        c["models"]["gpt2"] = {"source": "pretrained", "name": "gpt2", "path": None}
        c["experiments"]["language_model"]["models"].append("gpt2")

    lines = problems_of(test_config, pretrained)
    assert (
        "experiments.language_model.eval_datasets: no entry for the pretrained model 'gpt2'; "
        "allowed: a text dataset tokenized with its tokenizer"
    ) in lines


def test_a_subset_names_the_dataset_it_draws_from(test_config):
    def bad(c):
        c["datasets"]["stdlib_heldout"]["dataset"] = "stdlib_txt"
        c["datasets"]["stdlib_sae_train"].update(dataset="induction_train", split="validation")

    assert problems_of(test_config, bad) == [
        "datasets.stdlib_sae_train.split: validation, but dataset 'induction_train' of kind "
        "'repeated_spans' has no validation split; allowed: train",
        "datasets.stdlib_heldout.dataset: unknown dataset 'stdlib_txt' (did you mean "
        "'stdlib_text'?); known: induction_train, induction_heldout, repeated_random, "
        "stdlib_text, stdlib_sae_train, stdlib_heldout, repeated_random_text, ioi_train, "
        "othello_train, othello_heldout",
    ]


def test_a_subset_is_read_like_its_dataset(test_config):
    config = copy.deepcopy(test_config)
    assert config_problems(config, SCHEMAS)[0] == []
    subset, text = config["datasets"]["stdlib_heldout"], config["datasets"]["stdlib_text"]
    assert (subset["seq_len"], subset["d_vocab"]) == (text["seq_len"], text["d_vocab"])
    lines = problems_of(
        test_config, lambda c: c["models"]["gpt_2l"]["architecture"].update(n_ctx=32)
    )
    assert any(line.startswith("datasets.stdlib_heldout.seq_len: 64 makes") for line in lines)


def test_per_model_induction_settings_are_checked_under_their_own_key(test_config):
    def bad(c):
        c["experiments"]["induction"]["per_model"]["gpt_2l"]["icl_late"] = 64
        c["experiments"]["induction"]["per_model"]["gpt_3l"] = {"icl_late": 9}

    assert problems_of(test_config, bad) == [
        "experiments.induction.per_model.gpt_3l: unknown model 'gpt_3l' (did you mean "
        "'gpt_2l'?); known: attn_only_1l, attn_only_2l, gpt_2l (experiments.induction.models "
        "lists the models analysed)",
        "experiments.induction.per_model.gpt_2l.icl_late: 64 >= length 64 of dataset 'stdlib_text'",
    ]


# --- text datasets tokenized by a pretrained model's tokenizer ----------------------------------


def gpt_dir(path, *, eot=True) -> str:
    """A save_pretrained-like directory: config.json and a GPT-2-kind tokenizer.json (the 256
    byte tokens, then <|endoftext|>: id 256, the last, as GPT-2's 50256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if eot:
        tokenizer.add_special_tokens(["<|endoftext|>"])
    path.mkdir()
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "config.json").write_text("{}")
    return str(path)


def with_gpt_text(config, path, model="gpt", **entry):
    """models.<model> pretrained (from ``path``), evaluated by the language-model experiment on
    ``gpt_text``, 100 kB of the stdlib tokenized by its tokenizer."""
    config["models"][model] = {"source": "pretrained", "name": model, "path": path}
    config["datasets"]["gpt_text"] = {
        "kind": "text", "tokenizer": model, "seq_len": 64, "max_bytes": 100_000, **entry,
    }  # fmt: skip
    lm = config["experiments"]["language_model"]
    lm["models"].append(model)
    lm["eval_datasets"] = {model: "gpt_text"}


def test_a_text_dataset_reads_a_pretrained_models_tokenizer(test_config, tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.chdir(tmp_path)  # no results/ here
    path = gpt_dir(tmp_path / "gpt")
    config = copy.deepcopy(test_config)
    with_gpt_text(config, path)
    config["datasets"]["gpt_rows"] = {
        "kind": "subset", "dataset": "gpt_text", "split": "validation", "n_sequences": 8,
    }  # fmt: skip
    assert config_problems(config, SCHEMAS)[0] == []
    # its vocabulary is the tokenizer's, filled in as a default is (the subset's too)
    datasets = config["datasets"]
    assert datasets["gpt_text"]["d_vocab"] == 257 == datasets["gpt_rows"]["d_vocab"]
    assert Workflow(config).problems() == []  # the filled-in size is its own
    wildcards = SimpleNamespace(dataset="gpt_text")
    assert Workflow(config).text_tokenizer_flags(wildcards) == f"--tokenizer-path {path}"

    def trained_on_it(c):  # a model trained on it is held to that vocabulary
        with_gpt_text(c, path)
        c["models"]["gpt_2l"]["architecture"]["d_vocab"] = 200
        c["models"]["gpt_2l"]["training"]["dataset"] = "gpt_text"

    assert (
        "datasets.gpt_text.d_vocab: 257 is larger than models.gpt_2l.architecture.d_vocab=200 "
        "(models.gpt_2l.training.dataset feeds it to that model)"
    ) in problems_of(test_config, trained_on_it)


def test_a_pretrained_tokenizer_is_checked_before_any_job(test_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = gpt_dir(tmp_path / "gpt")

    def tokenizer_of(model):
        return lambda c: (with_gpt_text(c, path), c["datasets"]["gpt_text"].update(tokenizer=model))

    assert problems_of(test_config, tokenizer_of("gtp")) == [
        "datasets.gpt_text.tokenizer: unknown model 'gtp' (did you mean 'gpt'?); known: "
        "attn_only_1l, attn_only_2l, gpt_2l, ioi_2l, othello_2l, othello_2l_init, gpt",
        "experiments.language_model.eval_datasets.gpt: dataset 'gpt_text' is tokenized with "
        "models.gtp's, not with models.gpt's; allowed: a text dataset with tokenizer: gpt",
    ]
    assert problems_of(test_config, tokenizer_of("gpt_2l"))[0] == (
        "datasets.gpt_text.tokenizer: models.gpt_2l is trained here, and reads its dataset's "
        "tokenizer; allowed: a pretrained model (gpt), or null to train a tokenizer here"
    )
    assert problems_of(test_config, lambda c: with_gpt_text(c, path, d_vocab=4096)) == [
        "datasets.gpt_text.d_vocab: 4096, but the tokenizer of models.gpt has 257 tokens; "
        "remove d_vocab (the vocabulary is the tokenizer's)"
    ]
    no_eot = gpt_dir(tmp_path / "no_eot", eot=False)
    assert problems_of(test_config, lambda c: with_gpt_text(c, no_eot)) == [
        "datasets.gpt_text.tokenizer: the tokenizer of models.gpt has no <|endoftext|> token, "
        "which starts every row and ends every file; allowed: a pretrained model whose "
        "tokenizer has one (GPT-2's: id 50256), or null to train a tokenizer here"
    ]
    (tmp_path / "weights_only").mkdir()
    (tmp_path / "weights_only/config.json").write_text("{}")
    lines = problems_of(test_config, lambda c: with_gpt_text(c, str(tmp_path / "weights_only")))
    assert lines == [
        f"datasets.gpt_text.tokenizer: models.gpt.path '{tmp_path}/weights_only' holds no "
        "tokenizer.json (nor vocab.json and merges.txt); save the model's tokenizer there too "
        "(its save_pretrained)"
    ]

    def on_another_tokenizer(c):
        with_gpt_text(c, path)
        c["experiments"]["language_model"]["eval_datasets"]["gpt"] = "stdlib_text"

    assert problems_of(test_config, on_another_tokenizer) == [
        "experiments.language_model.eval_datasets.gpt: dataset 'stdlib_text' is tokenized with "
        "a tokenizer trained on it, not with models.gpt's; allowed: a text dataset with "
        "tokenizer: gpt"
    ]


def test_without_weights_a_pretrained_tokenizer_is_the_weights_line(
    test_config, tmp_path, monkeypatch
):
    """GPT-2 named, not in the cache, no path: the one paragraph that exists for its weights,
    before any job; from the dataset's key when only the dataset reads it."""
    from huggingface_hub import constants

    from mechflow.data.text import save_tokenizer

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # nothing imported or built here
    lines = problems_of(test_config, lambda c: with_gpt_text(c, None, model="gpt2"))
    assert len(lines) == 1
    assert lines[0].startswith("models.gpt2: the weights of pretrained model 'gpt2'")
    assert "hf download gpt2" in lines[0] and "models.gpt2.path" in lines[0]

    def dataset_only(c):
        with_gpt_text(c, None, model="gpt2")
        c["experiments"]["language_model"].update(models=["gpt_2l"], eval_datasets={})

    lines = problems_of(test_config, dataset_only)
    assert len(lines) == 1
    assert lines[0].startswith(
        "datasets.gpt_text.tokenizer: reads the tokenizer of models.gpt2; the weights of "
        "pretrained model 'gpt2'"
    )
    # built already (as an imported model needs no cache): its own tokenizer gives the size
    from tokenizers import Tokenizer

    (tmp_path / "results/datasets").mkdir(parents=True)
    tokenizer = Tokenizer.from_file(gpt_dir(tmp_path / "built") + "/tokenizer.json")
    save_tokenizer(tokenizer, tmp_path / "results/datasets/gpt_text.tokenizer.json")
    config = copy.deepcopy(test_config)
    dataset_only(config)
    assert config_problems(config, SCHEMAS)[0] == []
    assert config["datasets"]["gpt_text"]["d_vocab"] == 257


def with_ioi(**spec):
    def mutate(c):
        c["datasets"]["ioi_train"] = {"kind": "ioi", "n_sequences": 100, "seq_len": 32, **spec}

    return mutate


def test_an_ioi_dataset_is_checked_before_any_job(test_config):
    assert problems_of(test_config, with_ioi()) == []
    lines = problems_of(
        test_config,
        with_ioi(
            names=["Mary Ann", "John", "Bob", "Sam", "Tom"],
            templates=["[N1] went to the [PLACE] , [S] gave a [OBJECT] to"],
            held_out_templates=1,
        ),
    )
    assert lines == [
        "datasets.ioi_train.names: every entry must be one word (one token), got ['Mary Ann']",
        "datasets.ioi_train.templates[0]: template '[N1] went to the [PLACE] , [S] gave a "
        "[OBJECT] to': needs [N2] exactly once",
        "datasets.ioi_train.held_out_templates must be in [0, 0], got 1",
    ]
    assert problems_of(test_config, with_ioi(seq_len=20)) == [
        "datasets.ioi_train.seq_len: 20, but the longest prompt and its answer take 29 tokens "
        "(<bos>, prefix, template, answer)"
    ]


def test_an_ioi_datasets_vocabulary_is_its_d_vocab(test_config):
    from mechflow.experiments.ioi.prompts import Vocabulary
    from mechflow.wiring import validate_config

    config = copy.deepcopy(test_config)
    with_ioi()(config)
    assert validate_config(config, SCHEMAS) == []  # fills the schema's defaults in
    workflow = Workflow(config)
    assert workflow.problems() == []
    assert workflow.datasets["ioi_train"]["d_vocab"] == len(Vocabulary.build())


def test_the_ioi_experiment_is_checked_before_any_job(test_config):
    def mutate(c):
        c["experiments"]["ioi"].update(
            models=["ioi_2l", "attn_only_1l"], shards=3, pretrained_words="repeated_random"
        )

    assert problems_of(test_config, mutate) == [
        "experiments.ioi.pretrained_words: dataset 'repeated_random' must be of kind ioi",
        "experiments.ioi.shards: 3, but models.ioi_2l has 2 layers to shard the sweeps over; "
        "allowed 1 to 2",
        "experiments.ioi.models[1]: models.attn_only_1l is trained on dataset 'induction_train' "
        "of kind 'repeated_spans'; allowed: a model trained on a dataset of kind ioi",
        "experiments.ioi.shards: 3, but models.attn_only_1l has 1 layers to shard the sweeps "
        "over; allowed 1 to 1",
    ]


# --- OthelloGPT: bad boards, controls and datasets are named before any job ----------------------


@pytest.mark.parametrize(
    ("size", "message"),
    [(7, "datasets.othello_train.board_size: 7 is not a multiple of 2"),
     (4, "datasets.othello_train.board_size: 4 is less than the minimum of 6")],
)  # fmt: skip
def test_an_odd_or_small_board_is_refused_naming_its_key(test_config, size, message):
    lines = problems_of(
        test_config, lambda c: c["datasets"]["othello_train"].update(board_size=size)
    )
    assert any(message in line for line in lines), lines


def test_othello_names_the_control_the_games_and_the_layers_it_needs(test_config):
    def broken(c):
        init = c["models"]["othello_2l_init"]  # its architecture is the model's (a YAML anchor)
        init["architecture"] = {**init["architecture"], "d_model": 64}
        c["datasets"]["othello_heldout"].update(board_size=8)
        c["experiments"]["othello"]["intervention"] = {"layer": 2}

    lines = problems_of(test_config, broken)
    assert any(
        "experiments.othello.controls.othello_2l: models.othello_2l_init.architecture differs"
        in line
        for line in lines
    ), lines
    assert any(
        "experiments.othello.eval_dataset: 8x8 games, but models.othello_2l plays 6x6" in line
        for line in lines
    ), lines
    assert any(
        "experiments.othello.intervention.layer: 2, but models.othello_2l has 2 layers" in line
        for line in lines
    ), lines


def test_othello_held_out_games_must_not_be_the_training_games(test_config):
    lines = problems_of(test_config, lambda c: c["datasets"]["othello_heldout"].update(seed=0))
    assert any("held-out games need another" in line for line in lines), lines


def test_the_legal_moves_objective_needs_games(test_config):
    lines = problems_of(
        test_config,
        lambda c: c["models"]["gpt_2l"]["training"].update(objective="legal_moves"),
    )
    assert any(
        "models.gpt_2l.training.objective: legal_moves needs games" in line for line in lines
    ), lines
