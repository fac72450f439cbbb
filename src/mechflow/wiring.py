"""The workflow's shared wiring: result paths, the shared stages' params, checks, the registry.

``workflow/rules/common.smk`` builds one :class:`Workflow` from the schema-validated config; the
shared rule files (datasets, models, activations) call its methods, and each experiment's rule
file calls its own ``Wiring`` (``mechflow.experiments.<name>.workflow``). Torch-free, and tested
without Snakemake.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import shlex
from pathlib import Path
from typing import Any

from mechflow.config_problems import did_you_mean, read_numbers, schema_problems, unknown_name
from mechflow.experiments import EXPERIMENTS, load_experiments
from mechflow.experiments.base import Experiment
from mechflow.models import WEIGHTS_FILE
from mechflow.models.config import Architecture, TrainingConfig, hook_names

RESULTS = "results"
# dataset keys the checks fill in from others (for check_fits), not the generator's parameters
DERIVED_KEYS = {"othello": ("seq_len", "d_vocab")}
# what the workflow does for a model of each source
MADE_BY = {"trained": "trained", "pretrained": "imported", "initialised": "initialised"}


class ConfigError(ValueError):
    """A config that passed the schema but is inconsistent; the message lists every problem."""


def validate_config(config: dict[str, Any], schemas: str | Path) -> list[str]:
    """JSON-Schema problems of ``config``, one line each, filling defaults: the shared schema,
    then each experiment's own (``<schemas>/<experiment>.schema.yaml``) on its section. Unknown
    experiments are left to :meth:`Workflow.problems`, which names the registered ones.

    Every schema file is read once into one registry, against which the sections' ``$ref``s to
    ``config.schema.yaml`` resolve. (``snakemake.utils.validate`` re-reads a referenced file at
    every ``$ref`` it follows: 46 YAML loads, ~1.7 s of every Snakemake start, SLURM jobs too;
    and it stops at the first error, printing the whole schema.)
    """
    read_numbers(config)
    validators = _schema_validators(str(Path(schemas).resolve()))
    problems = schema_problems(config, validators["config"])
    for name, section in (config.get("experiments") or {}).items():
        if name in EXPERIMENTS:
            problems += schema_problems(section, validators[name], f"experiments.{name}")
    if not problems:
        problems += inherit_subset_keys(config.get("datasets", {}))
    return problems


SUBSET_INHERITS = ("seq_len", "d_vocab")  # a subset's rows are its dataset's rows


def inherit_subset_keys(datasets: dict[str, Any]) -> list[str]:
    """Give each ``subset`` dataset the sequence length and vocabulary of the dataset it draws
    from (as the schema fills defaults), so every check and rule reads it like any dataset;
    the problems of one that cannot draw from its ``dataset``, one line each."""
    problems = []
    for name, spec in datasets.items():
        if spec["kind"] != "subset":
            continue
        key, parent = f"datasets.{name}.dataset", datasets.get(spec["dataset"])
        if parent is None:
            problems.append(unknown_name(key, "dataset", spec["dataset"], list(datasets)))
        elif parent["kind"] == "subset":
            problems.append(f"{key}: {spec['dataset']!r} is a subset itself; draw from its dataset")
        elif spec["split"] == "validation" and parent["kind"] != "text":
            problems.append(
                f"datasets.{name}.split: validation, but dataset {spec['dataset']!r} of kind "
                f"{parent['kind']!r} has no validation split; allowed: train"
            )
        else:
            spec.update({k: parent[k] for k in SUBSET_INHERITS if k in parent})
            if parent["kind"] == "repeated_random":
                spec["seq_len"] = sequence_length(parent)
    return problems


def text_source(datasets: dict[str, Any], name: str) -> str | None:
    """The text dataset whose tokenizer reads ``name`` (itself, or a subset's), else None."""
    spec = datasets.get(name)
    if spec is not None and spec["kind"] == "subset":
        name, spec = spec["dataset"], datasets.get(spec["dataset"])
    return name if spec is not None and spec["kind"] == "text" else None


def config_problems(config: dict[str, Any], schemas: str | Path) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a config: the schema's, then (on a valid one) the cross-key ones."""
    problems = validate_config(config, schemas)
    if problems:
        return problems, []
    workflow = Workflow(config)
    return workflow.problems(), workflow.warnings()


def format_problems(problems: list[str], configfiles: str | list | tuple = ()) -> str:
    """The message a researcher reads: which file, a count, then one line per problem."""
    if isinstance(configfiles, str):
        source = configfiles
    else:  # Snakemake's absolute paths, shown as the user typed them (relative to the workdir)
        cwd = Path.cwd()
        shown = [
            str(Path(p).relative_to(cwd)) if Path(p).is_relative_to(cwd) else str(p)
            for p in configfiles
        ]
        source = ", ".join(shown) or "config/config.yaml"
    n = len(problems)
    head = f"invalid config ({source}): {n} problem{'s' if n > 1 else ''}"
    return "\n  - ".join([head, *problems])


@functools.cache
def _schema_validators(schemas: str) -> dict[str, Any]:
    """``config`` and each experiment -> a Draft 2020-12 validator that fills in defaults."""
    import yaml
    from jsonschema import Draft202012Validator, validators
    from referencing import Registry, Resource

    contents = {}
    for name in ("config", *EXPERIMENTS):
        path = Path(schemas) / f"{name}.schema.yaml"
        schema = yaml.safe_load(path.read_text())
        schema["$id"] = path.as_uri()  # relative $refs resolve against the file's own URI
        contents[name] = schema
    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in contents.values()
    )
    fill_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        # the jsonschema FAQ's recipe: set a property's default, then validate as usual
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(key, subschema["default"])
        yield from fill_properties(validator, properties, instance, schema)

    Filling = validators.extend(Draft202012Validator, {"properties": properties_with_defaults})
    return {name: Filling(schema, registry=registry) for name, schema in contents.items()}


def dataset_path(name: str) -> str:
    return f"{RESULTS}/datasets/{name}.npy"


def validation_path(name: str) -> str:
    """The held-out split of a ``text`` dataset (make_text_dataset writes it)."""
    return f"{RESULTS}/datasets/{name}.validation.npy"


def tokenizer_path(name: str) -> str:
    """The tokenizer of a ``text`` dataset (make_text_dataset writes it; see ``text_source``)."""
    return f"{RESULTS}/datasets/{name}.tokenizer.json"


def activation_store(model: str, dataset: str) -> str:
    return f"{RESULTS}/activations/{model}/{dataset}.zarr"


def as_json(value: Any) -> str:
    """A params value handed to a step as one JSON flag (sorted keys: a stable rerun trigger)."""
    return json.dumps(value, sort_keys=True)


def architecture_of(spec: dict[str, Any]) -> Architecture | None:
    """The architecture of a trained or initialised model entry (None for pretrained: known
    only after loading)."""
    if spec.get("source") not in ("trained", "initialised"):
        return None
    return Architecture.from_dict(spec["architecture"])


def checkpoint_steps(training: dict[str, Any], length_key: str = "steps") -> list[int]:
    """The configured checkpoints, every ``checkpoint_every`` steps and ``log_checkpoints``
    log-spaced ones (1 .. steps: dense early, where a phase change shows first)."""
    steps = training[length_key]
    every = training.get("checkpoint_every")
    points = set(training.get("checkpoints", []))
    if every:
        points.update(range(0, steps + 1, every))
        points.add(steps)
    n_log = training.get("log_checkpoints", 0)
    if n_log:
        points.update(log_spaced(steps, n_log))
    return sorted(points)


def log_spaced(steps: int, n: int) -> list[int]:
    """``n`` integer steps from 1 to ``steps``, evenly spaced in log (fewer where they collide)."""
    if n == 1:
        return [steps]
    return sorted({round(steps ** (i / (n - 1))) for i in range(n)})


def training_config(training: dict[str, Any]) -> dict[str, Any]:
    """The TrainingConfig fields of a config entry (dataset and checkpoint_every resolved away)."""
    fields = {
        k: v
        for k, v in training.items()
        if k not in ("dataset", "checkpoint_every", "log_checkpoints", "objective")
    }
    fields["checkpoints"] = checkpoint_steps(training)
    return fields


def checked_architecture(config: dict[str, Any], model: str) -> Architecture | None:
    """A trained model's architecture for the cross-key checks; None when the model is unknown,
    pretrained (known only after loading) or its architecture invalid (reported with the model)."""
    spec = config.get("models", {}).get(model)
    try:
        return architecture_of(spec) if spec is not None else None
    except ValueError:
        return None


def expand_hooks(patterns: list[str], available: list[str]) -> list[str]:
    """Expand shell-style patterns (``blocks.*.attn.hook_pattern``) against a model's hook names."""
    out: list[str] = []
    for pattern in patterns:
        matched = fnmatch.filter(available, pattern)
        if not matched:
            raise ValueError(f"hook {pattern!r} matches no hook of the model")
        out += [name for name in matched if name not in out]
    return out


def sequence_length(dataset: dict[str, Any]) -> int:
    """Positions per sequence, BOS included (``repeated_spans`` and ``text``: ``seq_len``)."""
    if dataset["kind"] == "repeated_random":
        return 1 + 2 * dataset["half_len"]
    return dataset["seq_len"]


def alternation(names: list[str]) -> str:
    """A regex matching exactly these names (or nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def table_flags(wildcards, input) -> str:
    """Params of a plot rule: ``--table NAME=PATH`` per named input (a list repeats its name)."""
    return " ".join(
        f"--table {name}={shlex.quote(str(path))}"
        for name, paths in input.items()
        for path in ([paths] if isinstance(paths, str) else paths)
    )


def option_flags(**options: Any) -> str:
    """Params of a plot rule: ``--option NAME=VALUE`` per figure setting (None: the experiment is
    not configured, so the rule has no job)."""
    return " ".join(f"--option {k}={v}" for k, v in options.items() if v is not None)


class Workflow:
    """The config's shared stages and its registered experiments, for the rule files."""

    def __init__(self, config: dict[str, Any], experiments=EXPERIMENTS):
        self.config = config
        self.datasets: dict[str, Any] = config.get("datasets", {})
        self.models: dict[str, Any] = config.get("models", {})
        self.activations: dict[str, Any] = config.get("activations", {})
        self.experiments: dict[str, Experiment] = load_experiments(config, experiments)

    # --- names ----------------------------------------------------------------------------
    def models_from(self, source: str) -> list[str]:
        return [m for m, spec in self.models.items() if spec["source"] == source]

    def architecture(self, model: str) -> Architecture | None:
        return architecture_of(self.models[model])

    def wildcard_constraints(self) -> dict[str, str]:
        values = {"dataset": list(self.datasets), "model": list(self.models)}
        for experiment in self.experiments.values():
            for name, allowed in experiment.wildcards().items():
                values[name] = list(dict.fromkeys([*values.get(name, []), *allowed]))
        return {name: alternation(allowed) for name, allowed in values.items()}

    def targets(self) -> list[str]:
        return [t for e in self.experiments.values() if e.enabled for t in e.targets()]

    # --- checks ---------------------------------------------------------------------------
    def check(self) -> None:
        """Raise ConfigError listing every inconsistency (unknown names, sizes that do not fit)."""
        problems = self.problems()
        if problems:
            raise ConfigError(format_problems(problems, "config"))

    def problems(self) -> list[str]:
        """Every inconsistency the schema cannot see, one line each."""
        problems: list[str] = []
        registered = sorted(self.experiments)
        for name in self.config.get("experiments") or {}:
            if name not in self.experiments:
                problems.append(
                    f"experiments.{name}: unknown experiment{did_you_mean(name, registered)}; "
                    f"registered: {', '.join(registered)}"
                )
        self._check_datasets(problems)
        self._check_models(problems)
        self._check_extra_hooks(problems)
        self._check_pretrained(problems)
        for experiment in self.experiments.values():
            if experiment.enabled:
                try:
                    experiment.check(problems)
                except (TypeError, ValueError, KeyError) as err:  # a value the schema lets through
                    problems.append(
                        f"experiments.{experiment.name}: cannot be checked "
                        f"({type(err).__name__}: {err})"
                    )
        return list(dict.fromkeys(problems))  # a shared key read for several models: one line

    def used_models(self) -> list[str]:
        """Shared models some enabled experiment reads."""
        used = [m for e in self.experiments.values() if e.enabled for m in e.models()]
        return list(dict.fromkeys(used))

    def warnings(self) -> list[str]:
        """What is allowed but probably not meant, one line each (printed, never fatal)."""
        used = self.used_models()
        return [
            f"models.{name}: declared, but no enabled experiment uses it (nothing is "
            f"{MADE_BY[spec['source']]} for it)"
            for name, spec in self.models.items()
            if name not in used
        ]

    def _check_pretrained(self, problems: list[str]) -> None:
        """A ``path:`` must exist; without one, the weights must be in the Hugging Face cache
        unless the model was imported already (the cache check imports TransformerLens, so it
        runs only then)."""
        from mechflow.models import pretrained

        used = self.used_models()
        for name, spec in self.models.items():
            if spec["source"] != "pretrained":
                continue
            if spec["path"] is not None:
                why = pretrained.path_problem(spec["path"])
                if why is not None:
                    problems.append(
                        f"models.{name}.path: {why}; give a directory saved with save_pretrained"
                    )
            elif name in used and not Path(f"{RESULTS}/models/{name}/{WEIGHTS_FILE}").is_file():
                repo = pretrained.hub_repo(spec["name"])
                if not pretrained.is_cached(repo):
                    key = f"models.{name}"
                    problems.append(f"{key}: " + pretrained.weights_help(spec["name"], key, repo))

    def _check_datasets(self, problems: list[str]) -> None:
        for name, dataset in self.datasets.items():
            if dataset["kind"] == "text":
                from mechflow.data.text import CorpusError

                try:  # the files and the split by file, without reading them (~30 ms)
                    self.text_corpus(name)
                except CorpusError as err:
                    problems.append(f"datasets.{name}.{err}")
                if dataset.get("tokenizer") is not None:
                    self._check_text_tokenizer(name, problems)
            elif dataset["kind"] == "ioi":
                self._check_ioi(name, problems)
            elif dataset["kind"] == "othello":
                # the sizes follow from the board (as the schema fills a default in), so that
                # check_fits reads them like any dataset's
                from mechflow.data.othello import d_vocab
                from mechflow.experiments.othello.labels import seq_len

                dataset["seq_len"] = seq_len(dataset["board_size"])
                dataset["d_vocab"] = d_vocab(dataset["board_size"])
            elif dataset["kind"] == "repeated_spans":
                lo, hi = dataset["span_len"]
                if lo > hi:
                    problems.append(f"datasets.{name}.span_len: min {lo} > max {hi}")
                elif 2 * hi + 1 > dataset["seq_len"]:
                    problems.append(
                        f"datasets.{name}.span_len: max {hi} too long for seq_len "
                        f"{dataset['seq_len']} (need 2*max+1 <= seq_len)"
                    )

    def _check_ioi(self, name: str, problems: list[str]) -> None:
        """Each name, place and object one word, each template with N1, N2 and S, the longest
        prompt and its answer within seq_len; the vocabulary's size becomes ``d_vocab`` (as
        the schema fills a default in), so that check_fits reads it like any dataset's."""
        from mechflow.experiments.ioi import prompts

        dataset, where = self.datasets[name], f"datasets.{name}"
        lists = prompts.word_lists(dataset)
        found = len(problems)
        for kind in ("names", "places", "objects"):
            try:
                prompts.check_words(kind, lists[kind])
            except ValueError as err:
                problems.append(f"{where}.{err}")
        if len(lists["names"]) < 5:
            problems.append(f"{where}.names: at least 5 (two per prompt, three more for ABC)")
        for i, template in enumerate(lists["templates"]):
            try:
                prompts.check_template(template)
            except ValueError as err:
                problems.append(f"{where}.templates[{i}]: {err}")
        try:
            prompts.training_templates(len(lists["templates"]), dataset["held_out_templates"])
        except ValueError as err:
            problems.append(f"{where}.{err}")
        if len(problems) > found:
            dataset.setdefault("d_vocab", 0)
            return
        vocabulary = prompts.vocabulary_of(dataset)
        dataset["d_vocab"] = len(vocabulary)
        longest = (
            1
            + max(map(len, map(prompts.words, lists["prefixes"])))
            + max(map(len, map(prompts.words, lists["templates"])))
        )
        if longest + 1 > dataset["seq_len"]:
            problems.append(
                f"{where}.seq_len: {dataset['seq_len']}, but the longest prompt and its answer "
                f"take {longest + 1} tokens (<bos>, prefix, template, answer)"
            )

    def _check_models(self, problems: list[str]) -> None:
        for name, spec in self.models.items():
            try:
                arch = architecture_of(spec)
            except ValueError as err:
                problems.append(f"models.{name}.{err}")
                continue
            if arch is None or spec["source"] != "trained":
                continue
            training = spec["training"]
            if training["dataset"] not in self.datasets:
                problems.append(
                    unknown_name(
                        f"models.{name}.training.dataset",
                        "dataset",
                        training["dataset"],
                        list(self.datasets),
                    )
                )
            try:
                TrainingConfig.from_dict(training_config(training))
            except ValueError as err:
                problems.append(f"models.{name}.{err}")
            dataset = self.datasets.get(training["dataset"])
            if (
                training.get("objective") == "legal_moves"
                and dataset is not None
                and dataset["kind"] != "othello"
            ):
                problems.append(
                    f"models.{name}.training.objective: legal_moves needs games, and dataset "
                    f"{training['dataset']!r} is of kind {dataset['kind']!r}; allowed: a dataset "
                    "of kind othello, or next_token"
                )
            if training["eval_every"] and dataset is not None and dataset["kind"] != "text":
                problems.append(
                    f"models.{name}.training.eval_every: needs a held-out split, and dataset "
                    f"{training['dataset']!r} is of kind {dataset['kind']!r}; allowed: a "
                    "dataset of kind text (it has a validation split), or null"
                )
            check_fits(
                self.config, f"models.{name}.training.dataset", training["dataset"], name, problems
            )

    def _check_extra_hooks(self, problems: list[str]) -> None:
        for name, hooks in self.activations.get("extra_hooks", {}).items():
            if name not in self.models:
                problems.append(
                    unknown_name(
                        f"activations.extra_hooks.{name}", "model", name, list(self.models)
                    )
                )
                continue
            arch = checked_architecture(self.config, name)
            if arch is None:
                continue
            for hook in hooks:
                try:
                    expand_hooks([hook], hook_names(arch))
                except ValueError:
                    problems.append(
                        f"activations.extra_hooks.{name}: hook {hook!r} matches no hook of "
                        f"models.{name}{did_you_mean(hook, hook_names(arch))}; e.g. "
                        f"{hook_names(arch)[2]!r} (shell patterns like blocks.*.hook_resid_post work)"
                    )

    # --- datasets -------------------------------------------------------------------------
    def datasets_of_kind(self, *kinds: str) -> list[str]:
        return [d for d, spec in self.datasets.items() if spec["kind"] in kinds]

    def text_corpus(self, name: str) -> tuple[Path, dict[str, list[str]] | None]:
        """(root, files per split) of a text dataset (see ``mechflow.data.text.plan_corpus``)."""
        from mechflow.data.text import TextSpec, plan_corpus

        spec = {k: v for k, v in self.datasets[name].items() if k != "kind"}
        return plan_corpus(TextSpec.from_dict(spec))

    def _check_text_tokenizer(self, name: str, problems: list[str]) -> None:
        """A text dataset's ``tokenizer`` names a pretrained model whose tokenizer is here (read,
        ~0.1 s for GPT-2's) or was read already (the dataset is built), and has <|endoftext|>.
        Its vocabulary becomes the dataset's ``d_vocab`` (and its subsets'), as the schema fills
        a default in, so that every check reads it like any dataset's."""
        from mechflow.data.text import (
            CorpusError,
            TokenizerUnavailable,
            load_tokenizer,
            read_pretrained_tokenizer,
        )
        from mechflow.models import pretrained

        dataset, key = self.datasets[name], f"datasets.{name}.tokenizer"
        model, spec = dataset["tokenizer"], self.models.get(dataset["tokenizer"])
        allowed = ", ".join(self.models_from("pretrained")) or "none declared"
        if spec is None:
            problems.append(unknown_name(key, "model", model, list(self.models)))
            return
        if spec["source"] != "pretrained":
            problems.append(
                f"{key}: models.{model} is trained here, and reads its dataset's tokenizer; "
                f"allowed: a pretrained model ({allowed}), or null to train a tokenizer here"
            )
            return
        size = None
        if spec["path"] is not None and pretrained.path_problem(spec["path"]):
            pass  # the line of models.<model>.path says why
        else:
            try:
                read = read_pretrained_tokenizer(model, spec["name"], spec["path"])
                size = read.tokenizer.get_vocab_size()
            except TokenizerUnavailable as err:
                built = Path(tokenizer_path(name))
                imported = Path(f"{RESULTS}/models/{model}/{WEIGHTS_FILE}").is_file()
                if built.is_file():
                    size = load_tokenizer(built).get_vocab_size()
                elif spec["path"] is not None or imported or model not in self.used_models():
                    problems.append(f"datasets.{name}.{err}")
                # else models.<model>'s own line says where to put its files
            except CorpusError as err:
                problems.append(f"datasets.{name}.{err}")
        given = dataset.get("d_vocab")
        if size is not None and given not in (None, size):
            problems.append(
                f"datasets.{name}.d_vocab: {given}, but the tokenizer of models.{model} has "
                f"{size} tokens; remove d_vocab (the vocabulary is the tokenizer's)"
            )
        elif given is None:
            # unknown (a line above says why): 0 fits every model, so no second line follows
            dataset["d_vocab"] = size if size is not None else 0
        for subset in self.datasets.values():
            if subset["kind"] == "subset" and subset["dataset"] == name:
                subset["d_vocab"] = dataset["d_vocab"]

    def text_tokenizer_flags(self, wildcards) -> str:
        """Where make_text_dataset reads a pretrained tokenizer from: its model's directory, or
        its name (the local Hugging Face cache); nothing for a tokenizer trained here."""
        model = self.datasets[wildcards.dataset].get("tokenizer")
        if model is None:
            return ""
        spec = self.models[model]
        if spec["path"] is not None:
            return f"--tokenizer-path {shlex.quote(spec['path'])}"
        return f"--tokenizer-name {shlex.quote(spec['name'])}"

    def text_corpus_files(self, wildcards) -> list[str]:
        """Input of a text dataset: the user's files, so that editing, adding or removing one
        reruns it. Not the stdlib's (the provenance records the Python version instead)."""
        from mechflow.data.text import STDLIB, corpus_files

        spec = self.datasets[wildcards.dataset]
        if spec["source"] == STDLIB:
            return []
        root, files = corpus_files(spec["source"], spec["pattern"], spec["include_tests"])
        return [str(root)] if root.is_file() else [str(root / path) for path in files]

    def subset_source(self, wildcards) -> str:
        """The split a subset dataset draws its sequences from."""
        spec = self.datasets[wildcards.dataset]
        path = validation_path if spec["split"] == "validation" else dataset_path
        return path(spec["dataset"])

    def subset_n_sequences(self, wildcards) -> int:
        return self.datasets[wildcards.dataset]["n_sequences"]

    def subset_seed(self, wildcards) -> int:
        return self.datasets[wildcards.dataset]["seed"]

    def dataset_kind(self, wildcards) -> str:
        return self.datasets[wildcards.dataset]["kind"]

    def dataset_spec(self, wildcards) -> str:
        spec = self.datasets[wildcards.dataset]
        derived = DERIVED_KEYS.get(spec["kind"], ())
        return as_json({k: v for k, v in spec.items() if k != "kind" and k not in derived})

    # --- models ---------------------------------------------------------------------------
    def training_dataset(self, wildcards) -> str:
        return dataset_path(self.models[wildcards.model]["training"]["dataset"])

    def validation_dataset(self, wildcards) -> list[str]:
        """The held-out split a model's validation loss reads ([] without ``eval_every``)."""
        training = self.models[wildcards.model]["training"]
        return [validation_path(training["dataset"])] if training["eval_every"] else []

    def validation_flag(self, wildcards) -> str:
        paths = self.validation_dataset(wildcards)
        return f"--validation-tokens {shlex.quote(paths[0])}" if paths else ""

    def initial_seed(self, wildcards) -> int:
        return self.models[wildcards.model]["seed"]

    def architecture_json(self, wildcards) -> str:
        return as_json(self.architecture(wildcards.model).to_dict())

    def training_json(self, wildcards) -> str:
        """The TrainingConfig fields, and the objective unless it is the default (so a model
        trained before the key existed keeps its params, and is not retrained)."""
        training = self.models[wildcards.model]["training"]
        objective = training.get("objective", "next_token")
        extra = {} if objective == "next_token" else {"objective": objective}
        return as_json({**training_config(training), **extra})

    def pretrained_name(self, wildcards) -> str:
        return self.models[wildcards.model]["name"]

    def pretrained_path_flag(self, wildcards) -> str:
        path = self.models[wildcards.model]["path"]
        return f"--path {shlex.quote(path)}" if path else ""

    # --- activations ----------------------------------------------------------------------
    def cache_hooks(self, model: str, dataset: str) -> list[str]:
        """Hooks to cache: those the experiments read, plus the configured extras for the model."""
        patterns: list[str] = []
        for experiment in self.experiments.values():
            if experiment.enabled:
                for m, d, wanted in experiment.caches():
                    if (m, d) == (model, dataset):
                        patterns += wanted
        patterns += self.activations.get("extra_hooks", {}).get(model, [])
        arch = self.architecture(model)
        return expand_hooks(patterns, hook_names(arch)) if arch else list(dict.fromkeys(patterns))

    def cache_hook_flags(self, wildcards) -> str:
        return " ".join(f"--hook {h}" for h in self.cache_hooks(wildcards.model, wildcards.dataset))


def check_fits(
    config: dict[str, Any], where: str, dataset_name: str, model_name: str, problems: list[str]
) -> None:
    """A dataset's sequences and tokens must fit the model that reads them (``where`` says who
    feeds one to the other). The line names the dataset's key: it is the one to change, unless
    the model is too small, which the line also says."""
    dataset = config.get("datasets", {}).get(dataset_name)
    sizes = model_sizes(config, model_name)
    if sizes is None or dataset is None:
        return
    n_ctx, d_vocab, of = sizes
    length_key = "half_len" if dataset["kind"] == "repeated_random" else "seq_len"
    if sequence_length(dataset) > n_ctx:
        problems.append(
            f"datasets.{dataset_name}.{length_key}: {dataset[length_key]} makes sequences of "
            f"length {sequence_length(dataset)}, longer than models.{model_name}{of}."
            f"n_ctx={n_ctx} ({where} feeds it to that model)"
        )
    if "d_vocab" in dataset and dataset["d_vocab"] > d_vocab:
        problems.append(
            f"datasets.{dataset_name}.d_vocab: {dataset['d_vocab']} is larger than "
            f"models.{model_name}{of}.d_vocab={d_vocab} ({where} feeds it to that model)"
        )


def model_sizes(config: dict[str, Any], model: str) -> tuple[int, int, str] | None:
    """``(n_ctx, d_vocab, where they come from)`` of a model for the cross-key checks: a trained
    model's architecture, a pretrained one's local Hugging Face config; None when unknown."""
    arch = checked_architecture(config, model)
    if arch is not None:
        return arch.n_ctx, arch.d_vocab, ".architecture"
    spec = config.get("models", {}).get(model)
    if spec is None or spec.get("source") != "pretrained":
        return None
    from mechflow.models.pretrained import local_sizes

    sizes = local_sizes(spec["name"], spec.get("path"))
    if sizes is None:  # no weights here: that problem is reported on its own
        return None
    return sizes["n_ctx"], sizes["d_vocab"], " (its config.json)"
