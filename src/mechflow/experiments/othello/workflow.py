"""Wiring of the OthelloGPT experiment (workflow/rules/othello.smk): checks, targets, params."""

from __future__ import annotations

from typing import Any

from mechflow.config_problems import unknown_name
from mechflow.experiments.base import Experiment
from mechflow.wiring import RESULTS, activation_store, as_json, dataset_path

# figure -> its tables: (table name, file under results/othello/<model or its control>/)
FIGURE_TABLES = {
    "legal_moves": {"legal": "model/legal_by_position", "control_legal": "control/legal_by_position"},
    "probe_accuracy": {"probe_summary": "model/probe_summary"},
    "boards": {"probe_boards": "model/probe_boards", "probe_summary": "model/probe_summary"},
    "interventions": {"interventions": "model/interventions"},
    "attribution": {"move_attribution": "model/move_attribution",
                    "move_patching": "model/move_patching"},
    "neurons": {"neurons": "model/neurons", "neuron_activations": "model/neuron_activations"},
}  # fmt: skip
# table -> (its title in the report, the columns shown)
TABLES = {
    "legal_moves": ("legal moves on held-out games",
                    ["model", "positions", "games", "top1_legal", "legal_mass", "cross_entropy",
                     "kl_to_uniform_legal", "uniform_legal_entropy"]),
    "probe_summary": ("mean probe accuracy over squares per layer: trained, shuffled labels, random init",
                      ["condition", "layer", "label", "accuracy", "baseline", "worst_square", "probes"]),
    "interventions": ("edits along the probe direction against a random one of the same norm",
                      ["condition", "scale", "edits", "success", "unchanged", "mean_margin", "hook"]),
    "checks": ("OthelloGPT checks",
               ["check", "value", "threshold", "passed", "enforced", "meaning"]),
}  # fmt: skip


class Wiring(Experiment):
    name = "othello"

    def check(self, problems: list[str]) -> None:
        where = f"experiments.{self.name}"
        s = self.settings
        models, datasets = self.config.get("models", {}), self.config.get("datasets", {})
        eval_set = datasets.get(s["eval_dataset"])
        if eval_set is None:
            problems.append(
                unknown_name(f"{where}.eval_dataset", "dataset", s["eval_dataset"], list(datasets))
            )
        elif eval_set["kind"] != "othello":
            problems.append(
                f"{where}.eval_dataset: dataset {s['eval_dataset']!r} must be of kind othello"
            )
            eval_set = None
        for i, model in enumerate(s["models"]):
            key = f"{where}.models[{i}]"
            if model not in models:
                problems.append(unknown_name(key, "model", model, list(models)))
                continue
            spec = models[model]
            if spec["source"] != "trained":
                problems.append(f"{key}: models.{model} must be trained (source: trained)")
                continue
            train_set = datasets.get(spec["training"]["dataset"])
            if train_set is not None and train_set["kind"] != "othello":
                problems.append(
                    f"{key}: models.{model} is trained on dataset "
                    f"{spec['training']['dataset']!r} of kind {train_set['kind']!r}; allowed: a "
                    "dataset of kind othello"
                )
            elif train_set is not None and eval_set is not None:
                if train_set["board_size"] != eval_set["board_size"]:
                    problems.append(
                        f"{where}.eval_dataset: {eval_set['board_size']}x{eval_set['board_size']} "
                        f"games, but models.{model} plays {train_set['board_size']}x"
                        f"{train_set['board_size']}"
                    )
                elif train_set["seed"] == eval_set["seed"]:
                    problems.append(
                        f"{where}.eval_dataset: seed {eval_set['seed']} is the seed of models."
                        f"{model}'s training games; held-out games need another"
                    )
            self._check_control(model, problems)
            self._check_layers(model, problems)
        for model in s["controls"]:
            if model not in s["models"]:
                problems.append(f"{where}.controls.{model}: {model!r} is not in {where}.models")

    def _check_control(self, model: str, problems: list[str]) -> None:
        key = f"experiments.{self.name}.controls"
        models = self.config["models"]
        control = self.settings["controls"].get(model)
        if control is None:
            problems.append(
                f"{key}: no entry for {model!r}; allowed: a model of source initialised with "
                f"the architecture of models.{model} (its random-init control)"
            )
        elif control not in models:
            problems.append(unknown_name(f"{key}.{model}", "model", control, list(models)))
        elif models[control]["source"] != "initialised":
            problems.append(f"{key}.{model}: models.{control} must be of source initialised")
        elif models[control]["architecture"] != models[model]["architecture"]:
            problems.append(
                f"{key}.{model}: models.{control}.architecture differs from models.{model}'s; "
                "the control must be the same network, untrained"
            )

    def _check_layers(self, model: str, problems: list[str]) -> None:
        """The edited residual stream must have blocks after it; the neurons' MLP must exist."""
        where = f"experiments.{self.name}"
        arch = self.config["models"][model]["architecture"]
        n = arch["n_layers"]
        for key, value, top in (
            ("intervention.layer", self.settings["intervention"]["layer"], n - 1),
            ("attribution.neuron_layer", self.settings["attribution"]["neuron_layer"], n - 1),
        ):
            low = 1 if key.startswith("intervention") else 0
            if value is not None and not low <= value <= top:
                problems.append(
                    f"{where}.{key}: {value}, but models.{model} has {n} layers; allowed "
                    f"{low} to {top}, or null (layer {n // 2}, the middle)"
                )
        if arch.get("attn_only"):
            problems.append(
                f"models.{model}.architecture.attn_only: {where} reads neurons; the model needs MLPs"
            )

    def models(self) -> list[str]:
        if not self.enabled:
            return []
        s = self.settings
        controls = [s["controls"][m] for m in s["models"] if m in s["controls"]]
        return list(dict.fromkeys([*s["models"], *controls]))

    def units(self) -> list[str]:
        return list(self.settings["models"]) if self.enabled else []

    def caches(self) -> list[tuple[str, str, list[str]]]:
        return [(m, self.settings["eval_dataset"], self.hooks_of(m)) for m in self.models()]

    def targets(self) -> list[str]:
        targets = []
        for model in self.units():
            targets += [f"{RESULTS}/figures/{self.name}/{model}/{f}.png" for f in FIGURE_TABLES]
            targets += [f"{RESULTS}/{self.name}/{model}/{t}.html" for t in TABLES]
        return targets

    # --- params and inputs of the rules ---------------------------------------------------------
    def option(self, section: str, key: str) -> Any:
        """A key of a sub-section (``intervention``, ``attribution``); None when off."""
        return self.settings[section][key] if self.enabled else None

    def hooks_of(self, model: str) -> list[str]:
        from mechflow.experiments.othello.probing import probe_hooks

        return probe_hooks(self.config["models"][model]["architecture"]["n_layers"])

    def hook_flags(self, wildcards) -> str:
        return " ".join(f"--hook {h}" for h in self.hooks_of(wildcards.model))

    def board_size(self, wildcards) -> int:
        return self.config["datasets"][wildcards.dataset]["board_size"]

    def eval_tokens(self, wildcards) -> str:
        return dataset_path(self.settings["eval_dataset"])

    def eval_labels(self, wildcards) -> str:
        return f"{RESULTS}/{self.name}/labels/{self.settings['eval_dataset']}.zarr"

    def eval_store(self, wildcards) -> str:
        return activation_store(wildcards.model, self.settings["eval_dataset"])

    def control(self, wildcards) -> str:
        return self.settings["controls"][wildcards.model]

    def control_file(self, name: str):
        """An input function: a table of the model's control (``results/othello/<control>/``)."""

        def path(wildcards) -> str:
            return f"{RESULTS}/{self.name}/{self.control(wildcards)}/{name}.csv"

        path.__name__ = f"control_{name}"
        return path

    def probe_json(self, wildcards) -> str:
        return as_json(self.settings["probes"])

    def shuffled_flag(self, wildcards) -> str:
        """The shuffled-labels control is trained for the trained models only."""
        return "--shuffled-control" if wildcards.model in self.settings["models"] else ""

    def middle_layer(self, wildcards, key: str, section: str) -> int:
        value = self.settings[section][key]
        n_layers = self.config["models"][wildcards.model]["architecture"]["n_layers"]
        return n_layers // 2 if value is None else value

    def intervention_layer(self, wildcards) -> int:
        return self.middle_layer(wildcards, "layer", "intervention")

    def neuron_layer(self, wildcards) -> int:
        return self.middle_layer(wildcards, "neuron_layer", "attribution")

    def patch_move(self, wildcards) -> int:
        move = self.settings["attribution"]["move"]
        if move is not None:
            return move
        size = self.config["datasets"][self.settings["eval_dataset"]]["board_size"]
        return (size * size - 4) // 2 - self.settings["attribution"]["later"]

    def scales(self, wildcards) -> str:
        return " ".join(str(s) for s in self.settings["intervention"]["scales"])

    def enforce_flags(self, wildcards) -> str:
        flags = ["--enforce"] if self.settings["enforce_checks"] else []
        return " ".join(flags + [f"--report-only {c}" for c in self.settings["report_only"]])

    def thresholds_json(self, wildcards) -> str:
        return as_json(self.settings["thresholds"])

    def figure_inputs(self, tables: dict[str, str]) -> dict[str, Any]:
        """A figure rule's inputs: the model's tables, or its control's (``control/<table>``)."""
        inputs: dict[str, Any] = {}
        for name, where in tables.items():
            owner, table = where.split("/")
            inputs[name] = (
                f"{RESULTS}/{self.name}/{{model}}/{table}.csv"
                if owner == "model"
                else self.control_file(table)
            )
        return inputs
