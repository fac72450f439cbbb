"""Wiring of the induction experiment (workflow/rules/induction.smk): checks, targets, params."""

from __future__ import annotations

from typing import Any

from mechflow.config_problems import unknown_name
from mechflow.experiments.base import Experiment
from mechflow.wiring import (
    RESULTS,
    activation_store,
    check_fits,
    dataset_path,
    option_flags,
    sequence_length,
    validation_path,
)

PATTERN_HOOKS = "blocks.*.attn.hook_pattern"  # the head scores read every attention pattern
FIGURES = [
    "head_scores",
    "loss_by_position",
    "head_ablation",
    "composition",
    "copying",
    "phase_change",
]
PER_MODEL = ("eval_dataset", "icl_dataset", "icl_early", "icl_late")  # keys per_model may set


class Wiring(Experiment):
    name = "induction"

    def model_setting(self, model: str, key: str) -> Any:
        """A key for one model: its ``per_model`` entry's, else the shared one."""
        return self.settings["per_model"].get(model, {}).get(key, self.settings[key])

    def check(self, problems: list[str]) -> None:
        where = f"experiments.{self.name}"
        s, datasets = self.settings, self.config.get("datasets", {})
        known_models = list(self.config.get("models", {}))
        for i, model in enumerate(s["models"]):
            if model not in known_models:
                problems.append(unknown_name(f"{where}.models[{i}]", "model", model, known_models))
        for model in s["per_model"]:
            if model not in s["models"]:
                problems.append(
                    unknown_name(f"{where}.per_model.{model}", "model", model, s["models"])
                    + f" ({where}.models lists the models analysed)"
                )
        for model in s["models"]:
            own = s["per_model"].get(model, {})

            def key_of(key: str, model=model, own=own) -> str:
                return f"{where}.per_model.{model}.{key}" if key in own else f"{where}.{key}"

            names = {k: self.model_setting(model, k) for k in ("eval_dataset", "icl_dataset")}
            for key, name in names.items():
                if name not in datasets:
                    problems.append(unknown_name(key_of(key), "dataset", name, list(datasets)))
            eval_ds = datasets.get(names["eval_dataset"])
            if eval_ds is not None and eval_ds["kind"] != "repeated_random":
                problems.append(
                    f"{key_of('eval_dataset')}: {names['eval_dataset']!r} must be of kind "
                    "repeated_random"
                )
            icl_ds = datasets.get(names["icl_dataset"])
            early = self.model_setting(model, "icl_early")
            late = self.model_setting(model, "icl_late")
            if early >= late:
                problems.append(
                    f"{key_of('icl_late')}: icl_early ({early}) must be < icl_late ({late})"
                )
            if icl_ds is not None and late >= sequence_length(icl_ds):
                problems.append(
                    f"{key_of('icl_late')}: {late} >= length {sequence_length(icl_ds)} of "
                    f"dataset {names['icl_dataset']!r}"
                )
            for key, name in names.items():
                check_fits(self.config, key_of(key), name, model, problems)

    def models(self) -> list[str]:
        return list(self.settings["models"]) if self.enabled else []

    def units(self) -> list[str]:
        return self.models()

    def caches(self) -> list[tuple[str, str, list[str]]]:
        return [
            (model, self.model_setting(model, "eval_dataset"), [PATTERN_HOOKS])
            for model in self.settings["models"]
        ]

    def figures(self, model: str) -> list[str]:
        spec = self.config["models"][model]
        figures = list(FIGURES)
        if spec["source"] == "pretrained":
            figures.remove("phase_change")  # no checkpoints of a pretrained model
        elif spec["architecture"]["n_layers"] == 1:
            figures.remove("composition")  # composition needs two layers
        return figures

    def targets(self) -> list[str]:
        targets = [
            f"{RESULTS}/figures/{self.name}/{model}/{figure}.png"
            for model in self.settings["models"]
            for figure in self.figures(model)
        ]
        # the headline tables, rendered for the report
        targets += [
            f"{RESULTS}/{self.name}/{model}/{table}.html"
            for model in self.settings["models"]
            for table in ("head_scores", "head_ablation")
        ]
        # stores of the configured extra hooks: on the model's induction eval set
        for model, hooks in self.config.get("activations", {}).get("extra_hooks", {}).items():
            if hooks and model in self.settings["models"]:
                targets.append(activation_store(model, self.model_setting(model, "eval_dataset")))
        return targets

    # --- params and inputs of the rules ---------------------------------------------------------
    def eval_dataset(self, wildcards) -> str:
        return self.model_setting(wildcards.model, "eval_dataset")

    def eval_tokens(self, wildcards) -> str:
        return dataset_path(self.eval_dataset(wildcards))

    def icl_tokens(self, wildcards) -> str:
        """The ICL score's sequences: a text dataset's held-out split, any other dataset itself."""
        name = self.model_setting(wildcards.model, "icl_dataset")
        if self.config["datasets"][name]["kind"] == "text":
            return validation_path(name)
        return dataset_path(name)

    def eval_store(self, wildcards) -> str:
        return activation_store(wildcards.model, self.eval_dataset(wildcards))

    def half_len(self, wildcards) -> int:
        return self.config["datasets"][self.eval_dataset(wildcards)]["half_len"]

    def icl_early(self, wildcards) -> int:
        return self.model_setting(wildcards.model, "icl_early")

    def icl_late(self, wildcards) -> int:
        return self.model_setting(wildcards.model, "icl_late")

    def loss_by_position_options(self, wildcards) -> str:
        """The eval set's vocabulary: the loss-by-position figure marks ln(d_vocab)."""
        return option_flags(
            d_vocab=self.config["datasets"][self.eval_dataset(wildcards)]["d_vocab"]
        )
