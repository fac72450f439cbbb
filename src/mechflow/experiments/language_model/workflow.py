"""Wiring of the language-model experiment (workflow/rules/language_model.smk): a model of text
scored against baselines, sampled, read with the logit lens and direct logit attribution."""

from __future__ import annotations

from mechflow.config_problems import unknown_name
from mechflow.experiments.base import Experiment
from mechflow.wiring import (
    RESULTS,
    as_json,
    check_fits,
    dataset_path,
    tokenizer_path,
    validation_path,
)

FIGURES = ["loss_curve", "logit_lens", "logit_attribution"]
TABLES = ["losses", "samples", "logit_lens"]


class Wiring(Experiment):
    name = "language_model"

    def check(self, problems: list[str]) -> None:
        where = f"experiments.{self.name}"
        s = self.settings
        models, datasets = self.config.get("models", {}), self.config.get("datasets", {})
        for i, model in enumerate(s["models"]):
            if model not in models:
                problems.append(unknown_name(f"{where}.models[{i}]", "model", model, list(models)))
                continue
            spec = models[model]
            if spec["source"] == "trained":
                if model in s["eval_datasets"]:
                    problems.append(
                        f"{where}.eval_datasets.{model}: a trained model is evaluated on the "
                        "dataset it was trained on (its tokenizer); remove this entry"
                    )
                name = spec["training"]["dataset"]
                kind = datasets.get(name, {}).get("kind")
                if kind is not None and kind != "text":
                    problems.append(
                        f"{where}.models[{i}]: models.{model} is trained on dataset {name!r} of "
                        f"kind {kind!r}; allowed: a model trained on a dataset of kind text"
                    )
            elif model not in s["eval_datasets"]:
                problems.append(
                    f"{where}.eval_datasets: no entry for the pretrained model {model!r}; allowed: "
                    "a text dataset tokenized with its tokenizer"
                )
        for model, name in s["eval_datasets"].items():
            key = f"{where}.eval_datasets.{model}"
            if model not in s["models"]:
                problems.append(f"{key}: {model!r} is not in {where}.models")
            if name not in datasets:
                problems.append(unknown_name(key, "dataset", name, list(datasets)))
            elif datasets[name]["kind"] != "text":
                problems.append(f"{key}: dataset {name!r} must be of kind text")
            elif (
                models.get(model, {}).get("source") == "pretrained"
                and (tokenizer := datasets[name].get("tokenizer")) != model
            ):
                read = "a tokenizer trained on it" if tokenizer is None else f"models.{tokenizer}'s"
                problems.append(
                    f"{key}: dataset {name!r} is tokenized with {read}, not with models."
                    f"{model}'s; allowed: a text dataset with tokenizer: {model}"
                )
            else:
                check_fits(self.config, key, name, model, problems)

    def models(self) -> list[str]:
        return list(self.settings["models"]) if self.enabled else []

    def units(self) -> list[str]:
        return self.models()

    def figures(self, model: str) -> list[str]:
        figures = list(FIGURES)
        if self.config["models"][model]["source"] != "trained":
            figures.remove("loss_curve")  # no training log of a pretrained model
        return figures

    def targets(self) -> list[str]:
        targets = []
        for model in self.models():
            targets += [
                f"{RESULTS}/figures/{self.name}/{model}/{f}.png" for f in self.figures(model)
            ]
            targets += [f"{RESULTS}/{self.name}/{model}/{t}.html" for t in TABLES]
        return targets

    # --- params and inputs of the rules ---------------------------------------------------------
    def text_dataset(self, model: str) -> str:
        spec = self.config["models"][model]
        if spec["source"] == "trained":
            return spec["training"]["dataset"]
        return self.settings["eval_datasets"][model]

    def train_tokens(self, wildcards) -> str:
        return dataset_path(self.text_dataset(wildcards.model))

    def validation_tokens(self, wildcards) -> str:
        return validation_path(self.text_dataset(wildcards.model))

    def tokenizer(self, wildcards) -> str:
        return tokenizer_path(self.text_dataset(wildcards.model))

    def sampling_json(self, wildcards) -> str:
        return as_json(self.settings["sampling"])
