"""Wiring of the IOI experiment (workflow/rules/ioi.smk): checks, targets, params."""

from __future__ import annotations

from typing import Any

from mechflow.config_problems import unknown_name
from mechflow.experiments.base import Experiment
from mechflow.wiring import RESULTS, as_json, dataset_path

# figure -> the tables it is drawn from (results/ioi/{model}/<table>.csv)
FIGURE_TABLES = {
    "dla": ["head_classes"],
    "patching": ["patching"],
    "name_mover_attention": ["head_classes"],
    "circuit": ["head_classes"],
    "faithfulness": ["faithfulness", "knockouts"],
}
# table -> (its title in the report, the columns shown)
TABLES = {
    "accuracy": ("IOI accuracy and logit difference per split",
                 ["split", "prompts", "accuracy", "io_over_s", "logit_diff", "logit_diff_sd",
                  "abc_logit_diff"]),
    "head_classes": ("every head, its IOI class and the measurements it was found from",
                     ["layer", "head", "class", "dla_io", "dla_s", "dla_diff", "att_end_io",
                      "att_end_s1", "att_end_s2", "att_s2_s1", "att_s2_s1p1", "via_movers_q",
                      "via_inhibitors_qkv", "to_logits"]),
    "checks": ("IOI checks", ["check", "value", "threshold", "passed", "meaning"]),
}  # fmt: skip
GPT2_SMALL = ("gpt2", "gpt2-small")  # TransformerLens names of GPT-2 small: the paper's checks


class Wiring(Experiment):
    name = "ioi"

    def check(self, problems: list[str]) -> None:
        where = f"experiments.{self.name}"
        s = self.settings
        models, datasets = self.config.get("models", {}), self.config.get("datasets", {})
        words = s["pretrained_words"]
        if words is not None:
            if words not in datasets:
                problems.append(unknown_name(f"{where}.pretrained_words", "dataset", words,
                                             list(datasets)))  # fmt: skip
            elif datasets[words]["kind"] != "ioi":
                problems.append(f"{where}.pretrained_words: dataset {words!r} must be of kind ioi")
        for i, model in enumerate(s["models"]):
            key = f"{where}.models[{i}]"
            if model not in models:
                problems.append(unknown_name(key, "model", model, list(models)))
                continue
            spec = models[model]
            if spec["source"] == "trained":
                name = spec["training"]["dataset"]
                kind = datasets.get(name, {}).get("kind")
                if kind is not None and kind != "ioi":
                    problems.append(
                        f"{key}: models.{model} is trained on dataset {name!r} of kind {kind!r}; "
                        "allowed: a model trained on a dataset of kind ioi"
                    )
            else:
                self._check_tokens(model, key, problems)
            layers = self.n_layers(model)
            if layers is not None and s["shards"] > layers:
                problems.append(
                    f"{where}.shards: {s['shards']}, but models.{model} has {layers} layers to "
                    f"shard the sweeps over; allowed 1 to {layers}"
                )

    def _check_tokens(self, model: str, key: str, problems: list[str]) -> None:
        """A pretrained model's tokenizer (when it is here) must read every name, place and
        object as one token."""
        from mechflow.data.text import CorpusError, TokenizerUnavailable, read_pretrained_tokenizer
        from mechflow.experiments.ioi.prompts import TextVocabulary, longest_prompt, word_lists
        from mechflow.models.pretrained import local_sizes

        spec = self.config["models"][model]
        try:
            tokenizer = read_pretrained_tokenizer(model, spec["name"], spec["path"])
        except (CorpusError, TokenizerUnavailable, OSError):
            return  # no tokenizer here: the import reports the missing model
        vocabulary = TextVocabulary(tokenizer.tokenizer, tokenizer.eot_id)
        lists = word_lists(self.words_spec(model))
        source = self.settings["pretrained_words"]
        found = len(problems)
        for kind in ("names", "places", "objects"):
            try:
                vocabulary.encode(list(lists[kind]))
            except KeyError as err:
                at = f"datasets.{source}.{kind}" if source else f"{key} (the built-in {kind})"
                problems.append(f"{at}: models.{model}'s tokenizer: {err.args[0]}")
        sizes = local_sizes(spec["name"], spec["path"])
        if len(problems) > found or sizes is None:
            return
        longest = longest_prompt(vocabulary, lists)
        if longest > sizes["n_ctx"]:
            at = f"datasets.{source}" if source else key
            problems.append(
                f"{at}: the longest prompt is {longest} tokens of models.{model}'s tokenizer, "
                f"more than its n_ctx={sizes['n_ctx']}; use shorter templates or prefixes"
            )

    def n_layers(self, model: str) -> int | None:
        spec = self.config["models"][model]
        if spec["source"] == "trained":
            return spec["architecture"]["n_layers"]
        from mechflow.models.pretrained import local_sizes

        sizes = local_sizes(spec["name"], spec["path"])
        return None if sizes is None else sizes.get("n_layers")

    def models(self) -> list[str]:
        return list(self.settings["models"]) if self.enabled else []

    def units(self) -> list[str]:
        return self.models()

    def targets(self) -> list[str]:
        targets = []
        for model in self.models():
            targets += [f"{RESULTS}/figures/{self.name}/{model}/{f}.png" for f in FIGURE_TABLES]
            targets += [f"{RESULTS}/{self.name}/{model}/{t}.html" for t in TABLES]
        return targets

    # --- params and inputs of the rules ---------------------------------------------------------
    def trained(self, model: str) -> bool:
        return self.config["models"][model]["source"] == "trained"

    def words_spec(self, model: str) -> dict[str, Any]:
        """The ioi dataset spec a model's prompts come from."""
        if self.trained(model):
            return self.config["datasets"][self.config["models"][model]["training"]["dataset"]]
        words = self.settings["pretrained_words"]
        return {} if words is None else self.config["datasets"][words]

    def spec_json(self, wildcards) -> str:
        return as_json(self.words_spec(wildcards.model))

    def prompt_inputs(self, wildcards) -> dict[str, str]:
        """A trained model's training rows (never drawn), a pretrained one's tokenizer."""
        model = wildcards.model
        if self.trained(model):
            return {"training": dataset_path(self.config["models"][model]["training"]["dataset"])}
        return {"tokenizer": f"{RESULTS}/models/{model}/tokenizer.json"}

    def prompt_flags(self, wildcards, input) -> str:
        if "training" in input.keys():
            return f"--training-tokens {input.training}"
        return f"--tokenizer {input.tokenizer}"

    def shard_files(self, wildcards) -> list[str]:
        n = self.settings["shards"]
        return [
            f"{RESULTS}/{self.name}/{wildcards.model}/patching/shard_{i}_of_{n}.csv"
            for i in range(n)
        ]

    def reference(self, wildcards) -> str:
        spec = self.config["models"][wildcards.model]
        if spec["source"] == "trained":
            return "trained"
        return "gpt2" if spec["name"] in GPT2_SMALL else "none"

    def enforce_flag(self, wildcards) -> str:
        return "--enforce" if self.settings["enforce_checks"] else ""
