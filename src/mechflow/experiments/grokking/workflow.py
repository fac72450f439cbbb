"""Wiring of the grokking experiment (workflow/rules/grokking.smk): checks, targets, params."""

from __future__ import annotations

from typing import Any

from mechflow.experiments.base import Experiment
from mechflow.experiments.grokking.modular_addition import check_task, task_architecture
from mechflow.models.config import Architecture, FullBatchTrainingConfig
from mechflow.wiring import RESULTS, as_json, checkpoint_steps

MIN_PROGRESS_CHECKPOINTS = 5  # the progress-measure curves need a few points
FIGURES = ["grokking_curves", "embedding_fourier", "activation_maps", "progress_measures"]


def training_config(training: dict[str, Any]) -> dict[str, Any]:
    """The FullBatchTrainingConfig fields of a grokking run (checkpoint_every resolved away)."""
    fields = {k: v for k, v in training.items() if k != "checkpoint_every"}
    fields["checkpoints"] = checkpoint_steps(training, "epochs")
    return fields


def architecture(run: dict[str, Any]) -> Architecture:
    """The run's architecture with the sizes its modulus fixes (``a b =`` in, p residues out)."""
    return task_architecture(run["architecture"], run["modulus"])


class Wiring(Experiment):
    name = "grokking"

    def check(self, problems: list[str]) -> None:
        for name, run in self.settings["runs"].items():
            where = f"experiments.{self.name}.runs.{name}"
            try:
                check_task(run["modulus"], run["train_fraction"])
            except ValueError as err:
                problems.append(f"{where}: {err}")
                continue
            try:
                arch = architecture(run)
            except ValueError as err:
                problems.append(f"{where}.{err}")
                continue
            if arch.attn_only or arch.d_mlp is None:
                problems.append(
                    f"{where}.architecture: the Fourier analysis needs MLP neurons (d_mlp)"
                )
            training = run["training"]
            try:
                FullBatchTrainingConfig.from_dict(training_config(training))
            except ValueError as err:
                problems.append(f"{where}.{err}")
                continue
            epochs = training["epochs"]
            first, last = run["progress_range"]
            last = epochs if last is None else last
            saved = [e for e in checkpoint_steps(training, "epochs") if first <= e <= last]
            if last > epochs or first > last:
                problems.append(
                    f"{where}.progress_range: [{first}, {last}] is not within the {epochs} "
                    "training epochs"
                )
            elif first not in saved or last not in saved or len(saved) < MIN_PROGRESS_CHECKPOINTS:
                problems.append(
                    f"{where}.training: checkpoints ({len(saved)} in range) do not cover "
                    f"progress_range [{first}, {last}]: need checkpoints at both ends and at least "
                    f"{MIN_PROGRESS_CHECKPOINTS} (set checkpoint_every or checkpoints)"
                )

    def runs(self) -> list[str]:
        return list(self.settings["runs"]) if self.enabled else []

    def units(self) -> list[str]:
        return self.runs()

    def wildcards(self) -> dict[str, list[str]]:
        return {"run": self.runs()}

    def targets(self) -> list[str]:
        targets = []
        for run in self.runs():
            targets.append(f"{RESULTS}/{self.name}/{run}/checks.csv")
            targets += [f"{RESULTS}/figures/{self.name}/{run}/{f}.png" for f in FIGURES]
            # the headline tables, rendered for the report
            targets += [
                f"{RESULTS}/{self.name}/{run}/{t}.html" for t in ("checks", "key_frequencies")
            ]
        return targets

    # --- params of the rules ----------------------------------------------------------------
    def run(self, wildcards) -> dict[str, Any]:
        return self.settings["runs"][wildcards.run]

    def modulus(self, wildcards) -> int:
        return self.run(wildcards)["modulus"]

    def train_fraction(self, wildcards) -> float:
        return self.run(wildcards)["train_fraction"]

    def data_seed(self, wildcards) -> int:
        return self.run(wildcards)["data_seed"]

    def architecture_json(self, wildcards) -> str:
        return as_json(architecture(self.run(wildcards)).to_dict())

    def training_json(self, wildcards) -> str:
        return as_json(training_config(self.run(wildcards)["training"]))

    def progress_range_flags(self, wildcards) -> str:
        first, last = self.run(wildcards)["progress_range"]
        return f"--first-epoch {first}" + (f" --last-epoch {last}" if last is not None else "")

    def enforce_flag(self, wildcards) -> str:
        return "--enforce" if self.settings["enforce_checks"] else ""
