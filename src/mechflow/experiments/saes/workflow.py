"""Wiring of the SAE experiment (workflow/rules/saes.smk): the sweep, checks, targets, params."""

from __future__ import annotations

import shlex
from typing import Any

from mechflow.config_problems import did_you_mean, unknown_name
from mechflow.experiments.base import Experiment
from mechflow.models.config import Architecture, hook_names
from mechflow.wiring import (
    RESULTS,
    activation_store,
    as_json,
    check_fits,
    checked_architecture,
    dataset_path,
    text_source,
    tokenizer_path,
)

TOY_HOOK = "hook_hidden"  # the toy model's hidden layer, cached as an ordinary store
SWEEP_KNOBS = {
    "relu": "l1_coefficient",
    "jumprelu": "l1_coefficient",
    "topk": "k",
    "batchtopk": "k",
}


def sae_sweep(saes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """SAE name (``<architecture>_<value>``) -> its SAEConfig keys (defaults + sweep point)."""
    points = {}
    for arch, values in (saes.get("language_model") or {}).get("sweeps", {}).items():
        for value in values:
            points[f"{arch}_{value:g}"] = {
                **saes["defaults"],
                "architecture": arch,
                SWEEP_KNOBS[arch]: value,
            }
    return points


def toy_sae_config(saes: dict[str, Any]) -> dict[str, Any]:
    """The toy SAE's keys: defaults, then its own; one position per sample, so no BOS to skip."""
    own = saes["toy"]["sae"]
    defaults = dict(saes["defaults"])
    for width in ("d_sae", "expansion_factor"):  # its own width replaces the default's
        if width in own:
            defaults.pop("expansion_factor" if width == "d_sae" else "d_sae", None)
    return {**defaults, "skip_bos": False, **own}


def toy_sae_name(saes: dict[str, Any]) -> str:
    keys = toy_sae_config(saes)
    knob = SWEEP_KNOBS[keys["architecture"]]
    return f"{keys['architecture']}_{keys[knob]:g}"


def hook_width(arch: Architecture, hook: str) -> int | None:
    """The last-axis width of a hook when the architecture fixes it (else None)."""
    if hook.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return arch.d_mlp
    if hook.split(".")[-1] in (
        "hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
        "hook_attn_out", "hook_mlp_out", "hook_normalized", "hook_in",
    ):  # fmt: skip
        return arch.d_model
    return None


def sae_dir(source: str, hook: str, sae: str) -> str:
    return f"{RESULTS}/saes/{source}/{hook}/{sae}"


class Wiring(Experiment):
    name = "saes"

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.lm = (self.settings or {}).get("language_model")
        self.toy = (self.settings or {}).get("toy")
        self.sweep = sae_sweep(self.settings) if self.settings else {}
        self.toy_sae = toy_sae_name(self.settings) if self.toy else None

    def check(self, problems: list[str]) -> None:
        from mechflow.saes.config import SAEConfig  # torch-free

        def check_sae(where: str, keys: dict[str, Any], d_in: int | None, hook: str) -> None:
            # a width known only from the store (pretrained models, other hooks) is checked by
            # the step; here a large stand-in keeps the width-dependent checks from firing
            try:
                SAEConfig.from_dict({**keys, "d_in": d_in or 1 << 20, "hook_name": hook})
            except ValueError as err:
                problems.append(f"{where}: {err}")

        config, lm, toy = self.config, self.lm, self.toy
        if lm:
            where = f"experiments.{self.name}.language_model"
            datasets, models = config.get("datasets", {}), config.get("models", {})
            model = lm["model"]
            if model not in models:
                problems.append(unknown_name(f"{where}.model", "model", model, list(models)))
            arch = checked_architecture(config, model)
            for key in ("dataset", "eval_dataset"):
                if lm[key] not in datasets:
                    problems.append(
                        unknown_name(f"{where}.{key}", "dataset", lm[key], list(datasets))
                    )
            for key in ("dataset", "eval_dataset"):
                check_fits(config, f"{where}.{key}", lm[key], model, problems)
            for i, hook in enumerate(lm["hooks"]):
                if arch is not None and hook not in hook_names(arch):
                    problems.append(
                        f"{where}.hooks[{i}]: models.{model} has no hook {hook!r}"
                        f"{did_you_mean(hook, hook_names(arch))}"
                    )
            if not self.sweep:
                problems.append(f"{where}.sweeps: no SAE to train (give at least one architecture)")
            if lm.get("dashboard") and lm["dashboard"] not in self.sweep:
                problems.append(
                    f"{where}.dashboard: {lm['dashboard']!r} is not in the sweep {sorted(self.sweep)}"
                )
            for name, keys in self.sweep.items():
                for hook in lm["hooks"]:
                    width = hook_width(arch, hook) if arch is not None else None
                    check_sae(f"{where}.sweeps ({name})", keys, width, hook)
        if toy:
            where = f"experiments.{self.name}.toy"
            toys = (config.get("experiments", {}).get("superposition") or {}).get("toy_models", {})
            if toy["model"] not in toys:
                problems.append(
                    unknown_name(f"{where}.model", "toy model", toy["model"], list(toys))
                    + " (toy models are defined under experiments.superposition.toy_models)"
                )
                return
            spec = toys[toy["model"]]
            n = spec["n_instances"]
            if not -n <= toy["instance"] < n:
                problems.append(f"{where}.instance: {toy['instance']} but the toy model has {n}")
            check_sae(f"{where}.sae", toy_sae_config(self.settings), spec["d_hidden"], TOY_HOOK)

    def models(self) -> list[str]:
        return [self.lm["model"]] if self.lm else []

    def units(self) -> list[str]:
        """The language model and the toy model whose SAEs these are."""
        return list(dict.fromkeys(self.models() + ([self.toy["model"]] if self.toy else [])))

    def caches(self) -> list[tuple[str, str, list[str]]]:
        if not self.lm:
            return []
        return [
            (self.lm["model"], self.lm[key], self.lm["hooks"])
            for key in ("dataset", "eval_dataset")
        ]

    def wildcards(self) -> dict[str, list[str]]:
        return {
            "sae": list(self.sweep) + ([self.toy_sae] if self.toy_sae else []),
            "hook": (self.lm["hooks"] if self.lm else []) + [TOY_HOOK],
            "source": ([self.lm["model"]] if self.lm else [])
            + ([self.toy["model"]] if self.toy else []),
        }

    def targets(self) -> list[str]:
        figures = f"{RESULTS}/figures/{self.name}"
        targets = []
        if self.lm:
            for hook in self.lm["hooks"]:
                targets.append(f"{figures}/{self.lm['model']}/{hook}/frontier.png")
                # the sweep's metrics table, rendered for the report
                targets.append(
                    f"{RESULTS}/{self.name}/{self.lm['model']}/{hook}/sweep_metrics.html"
                )
                if self.lm.get("dashboard"):
                    targets.append(
                        f"{figures}/{self.lm['model']}/{hook}/dashboard_{self.lm['dashboard']}.png"
                    )
        if self.toy:
            targets.append(f"{figures}/{self.toy['model']}/recovery_{self.toy_sae}.png")
        return targets

    # --- params and inputs of the rules ---------------------------------------------------------
    def is_toy(self, wildcards) -> bool:
        return bool(self.toy) and wildcards.source == self.toy["model"]

    def train_store(self, wildcards) -> str:
        if self.is_toy(wildcards):
            return f"{RESULTS}/saes/{wildcards.source}/{TOY_HOOK}.zarr"
        return activation_store(wildcards.source, self.lm["dataset"])

    def sae_json(self, wildcards) -> str:
        if self.is_toy(wildcards):
            return as_json(toy_sae_config(self.settings))
        return as_json(self.sweep[wildcards.sae])

    def eval_store(self, wildcards) -> str:
        return activation_store(wildcards.model, self.lm["eval_dataset"])

    def eval_tokens(self, wildcards) -> str:
        return dataset_path(self.lm["eval_dataset"])

    def tokenizer(self, wildcards) -> list[str]:
        """The tokenizer of the eval tokens, when they are text (the dashboards decode them)."""
        text = text_source(self.config.get("datasets", {}), self.lm["eval_dataset"])
        return [tokenizer_path(text)] if text else []

    def tokenizer_flag(self, wildcards) -> str:
        return " ".join(f"--tokenizer {shlex.quote(path)}" for path in self.tokenizer(wildcards))

    def sweep_metrics(self, wildcards) -> list[str]:
        return [
            f"{sae_dir(wildcards.model, wildcards.hook, sae)}_metrics.csv" for sae in self.sweep
        ]

    def lm_setting(self, key: str) -> Any:
        return self.lm[key] if self.lm else None

    def toy_setting(self, key: str) -> Any:
        return self.toy[key] if self.toy else None
