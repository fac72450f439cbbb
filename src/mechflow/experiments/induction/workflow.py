"""Wiring of the induction experiment (workflow/rules/induction.smk): checks, targets, params."""

from __future__ import annotations

from mechflow.config_problems import unknown_name
from mechflow.experiments.base import Experiment
from mechflow.wiring import RESULTS, activation_store, check_fits, dataset_path, sequence_length

PATTERN_HOOKS = "blocks.*.attn.hook_pattern"  # the head scores read every attention pattern
FIGURES = [
    "head_scores",
    "loss_by_position",
    "head_ablation",
    "composition",
    "copying",
    "phase_change",
]


class Wiring(Experiment):
    name = "induction"

    def check(self, problems: list[str]) -> None:
        where = f"experiments.{self.name}"
        s, datasets = self.settings, self.config.get("datasets", {})
        known_models = list(self.config.get("models", {}))
        for i, model in enumerate(s["models"]):
            if model not in known_models:
                problems.append(unknown_name(f"{where}.models[{i}]", "model", model, known_models))
        for key in ("eval_dataset", "icl_dataset"):
            if s[key] not in datasets:
                problems.append(unknown_name(f"{where}.{key}", "dataset", s[key], list(datasets)))
        eval_ds = datasets.get(s["eval_dataset"])
        if eval_ds is not None and eval_ds["kind"] != "repeated_random":
            problems.append(
                f"{where}.eval_dataset: {s['eval_dataset']!r} must be of kind repeated_random"
            )
        icl_ds = datasets.get(s["icl_dataset"])
        early, late = s["icl_early"], s["icl_late"]
        if early >= late:
            problems.append(f"{where}: icl_early ({early}) must be < icl_late ({late})")
        if icl_ds is not None and late >= sequence_length(icl_ds):
            problems.append(
                f"{where}.icl_late: {late} >= length {sequence_length(icl_ds)} of "
                f"dataset {s['icl_dataset']!r}"
            )
        for model in s["models"]:
            check_fits(self.config, f"{where}.eval_dataset", s["eval_dataset"], model, problems)
            check_fits(self.config, f"{where}.icl_dataset", s["icl_dataset"], model, problems)

    def models(self) -> list[str]:
        return list(self.settings["models"]) if self.enabled else []

    def units(self) -> list[str]:
        return self.models()

    def caches(self) -> list[tuple[str, str, list[str]]]:
        return [
            (model, self.settings["eval_dataset"], [PATTERN_HOOKS])
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
        # stores of the configured extra hooks: on the induction eval set, which every model reads
        for model, hooks in self.config.get("activations", {}).get("extra_hooks", {}).items():
            if hooks:
                targets.append(activation_store(model, self.settings["eval_dataset"]))
        return targets

    # --- params and inputs of the rules ---------------------------------------------------------
    def eval_tokens(self, wildcards) -> str:
        return dataset_path(self.settings["eval_dataset"])

    def icl_tokens(self, wildcards) -> str:
        return dataset_path(self.settings["icl_dataset"])

    def eval_store(self, wildcards) -> str:
        return activation_store(wildcards.model, self.settings["eval_dataset"])

    def half_len(self, wildcards) -> int:
        return self.config["datasets"][self.settings["eval_dataset"]]["half_len"]

    def eval_vocab(self) -> int | None:
        """The eval set's vocabulary: the loss-by-position figure marks ln(d_vocab)."""
        if not self.enabled:
            return None
        return self.config["datasets"][self.settings["eval_dataset"]]["d_vocab"]
