"""Wiring of the superposition experiment (workflow/rules/superposition.smk)."""

from __future__ import annotations

from mechflow.experiments.base import Experiment
from mechflow.wiring import RESULTS, as_json


class Wiring(Experiment):
    name = "superposition"

    def check(self, problems: list[str]) -> None:
        """What the schema cannot say about toy models (checked again, fully, by the step)."""
        for name, toy in self.settings["toy_models"].items():
            where = f"experiments.{self.name}.toy_models.{name}"
            if toy["d_hidden"] >= toy["n_features"]:
                problems.append(
                    f"{where}.d_hidden: {toy['d_hidden']} must be < n_features={toy['n_features']}"
                )
            given = [k for k in ("feature_probability", "feature_probability_range") if k in toy]
            if len(given) != 1:
                problems.append(
                    f"{where}: give exactly one of feature_probability, feature_probability_range"
                )
            elif (
                given == ["feature_probability"]
                and len(toy["feature_probability"]) != toy["n_instances"]
            ):
                problems.append(
                    f"{where}.feature_probability: {len(toy['feature_probability'])} values for "
                    f"n_instances={toy['n_instances']}"
                )
            elif given == ["feature_probability_range"]:
                low, high = toy["feature_probability_range"]
                if low > high:
                    problems.append(f"{where}.feature_probability_range: min {low} > max {high}")
            if "importance_min" in toy and toy["importance_decay"] != 1.0:
                problems.append(f"{where}: give at most one of importance_min, importance_decay")
        phase_map = self.settings["phase_map"]
        for key in ("density_range", "importance_range"):
            if phase_map[key][0] > phase_map[key][1]:
                problems.append(f"experiments.{self.name}.phase_map.{key}: min > max")

    def toy_models(self) -> list[str]:
        return list(self.settings["toy_models"]) if self.enabled else []

    def units(self) -> list[str]:
        return self.toy_models()

    def wildcards(self) -> dict[str, list[str]]:
        return {"toy": self.toy_models()}

    def targets(self) -> list[str]:
        figures = f"{RESULTS}/figures/{self.name}"
        targets = [f"{figures}/phase_map.png"]
        for toy in self.toy_models():
            targets += [f"{figures}/{toy}/{f}.png" for f in ("superposition", "dimensionality")]
            targets.append(f"{RESULTS}/{self.name}/{toy}/instances.html")  # table for the report
        return targets

    # --- params of the rules ----------------------------------------------------------------
    def toy_model_json(self, wildcards) -> str:
        return as_json(self.settings["toy_models"][wildcards.toy])

    def phase_map_json(self, wildcards) -> str:
        return as_json(self.settings["phase_map"])
