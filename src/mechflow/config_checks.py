"""Cross-key checks of a schema-validated workflow config: what JSON Schema cannot express.

Called from ``workflow/rules/common.smk`` right after schema validation, so a bad config stops
the run before any job, with every problem listed by its key path.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from mechflow.data.modular_addition import check_task, task_architecture
from mechflow.models.config import (
    Architecture,
    FullBatchTrainingConfig,
    TrainingConfig,
    hook_names,
)

MIN_PROGRESS_CHECKPOINTS = 5  # the progress-measure curves need a few points


class ConfigError(ValueError):
    """A config that passed the schema but is inconsistent; the message lists every problem."""


def architecture_of(spec: dict[str, Any]) -> Architecture | None:
    """The architecture of a trained model entry (None for pretrained: known only after loading)."""
    if spec.get("source") != "trained":
        return None
    return Architecture.from_dict(spec["architecture"])


def checkpoint_steps(training: dict[str, Any], length_key: str = "steps") -> list[int]:
    steps = training[length_key]
    every = training.get("checkpoint_every")
    points = set(training.get("checkpoints", []))
    if every:
        points.update(range(0, steps + 1, every))
        points.add(steps)
    return sorted(points)


def training_config(training: dict[str, Any]) -> dict[str, Any]:
    """The TrainingConfig fields of a config entry (dataset and checkpoint_every resolved away)."""
    fields = {k: v for k, v in training.items() if k not in ("dataset", "checkpoint_every")}
    fields["checkpoints"] = checkpoint_steps(training)
    return fields


def grokking_training_config(training: dict[str, Any]) -> dict[str, Any]:
    """The FullBatchTrainingConfig fields of a grokking run (checkpoint_every resolved away)."""
    fields = {k: v for k, v in training.items() if k != "checkpoint_every"}
    fields["checkpoints"] = checkpoint_steps(training, "epochs")
    return fields


def grokking_architecture(run: dict[str, Any]) -> Architecture:
    """The run's architecture with the sizes its modulus fixes (``a b =`` in, p residues out)."""
    return task_architecture(run["architecture"], run["modulus"])


def _check_grokking(grokking: dict[str, Any], models: dict[str, Any], problems: list[str]) -> None:
    for name, run in grokking["runs"].items():
        where = f"experiments.grokking.runs.{name}"
        if name in models:
            problems.append(
                f"{where}: name clashes with models.{name} (both live in results/models)"
            )
        try:
            check_task(run["modulus"], run["train_fraction"])
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        try:
            arch = grokking_architecture(run)
        except ValueError as err:
            problems.append(f"{where}.{err}")
            continue
        if arch.attn_only or arch.d_mlp is None:
            problems.append(f"{where}.architecture: the Fourier analysis needs MLP neurons (d_mlp)")
        training = run["training"]
        try:
            FullBatchTrainingConfig.from_dict(grokking_training_config(training))
        except ValueError as err:
            problems.append(f"{where}.{err}")
            continue
        epochs = training["epochs"]
        first, last = run.get("progress_range", [0, None])
        last = epochs if last is None else last
        saved = [e for e in checkpoint_steps(training, "epochs") if first <= e <= last]
        if last > epochs or first > last:
            problems.append(
                f"{where}.progress_range: [{first}, {last}] is not within the {epochs} training epochs"
            )
        elif first not in saved or last not in saved or len(saved) < MIN_PROGRESS_CHECKPOINTS:
            problems.append(
                f"{where}.training: checkpoints ({len(saved)} in range) do not cover "
                f"progress_range [{first}, {last}]: need checkpoints at both ends and at least "
                f"{MIN_PROGRESS_CHECKPOINTS} (set checkpoint_every or checkpoints)"
            )


def _check_superposition(superposition: dict[str, Any], problems: list[str]) -> None:
    """What the schema cannot say about toy models (checked again, fully, by the step)."""
    for name, toy in superposition["toy_models"].items():
        where = f"experiments.superposition.toy_models.{name}"
        if toy["d_hidden"] >= toy["n_features"]:
            problems.append(
                f"{where}.d_hidden: {toy['d_hidden']} must be < n_features={toy['n_features']}"
            )
        given = [k for k in ("feature_probability", "feature_probability_range") if k in toy]
        if len(given) != 1:
            problems.append(
                f"{where}: give exactly one of feature_probability, feature_probability_range"
            )
        elif given == ["feature_probability"] and len(toy["feature_probability"]) != toy.get(
            "n_instances", 1
        ):
            problems.append(
                f"{where}.feature_probability: {len(toy['feature_probability'])} values for "
                f"n_instances={toy.get('n_instances', 1)}"
            )
        elif given == ["feature_probability_range"]:
            low, high = toy["feature_probability_range"]
            if low > high:
                problems.append(f"{where}.feature_probability_range: min {low} > max {high}")
        if "importance_min" in toy and toy.get("importance_decay", 1.0) != 1.0:
            problems.append(f"{where}: give at most one of importance_min, importance_decay")
    phase_map = superposition.get("phase_map", {})
    for key in ("density_range", "importance_range"):
        if key in phase_map and phase_map[key][0] > phase_map[key][1]:
            problems.append(f"experiments.superposition.phase_map.{key}: min > max")


SWEEP_KNOBS = {
    "relu": "l1_coefficient",
    "jumprelu": "l1_coefficient",
    "topk": "k",
    "batchtopk": "k",
}


def sae_sweep(saes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """SAE name (``<architecture>_<value>``) -> its SAEConfig keys (defaults + sweep point)."""
    points = {}
    for arch, values in saes.get("language_model", {}).get("sweeps", {}).items():
        for value in values:
            name = f"{arch}_{value:g}"
            points[name] = {
                **saes.get("defaults", {}),
                "architecture": arch,
                SWEEP_KNOBS[arch]: value,
            }
    return points


def toy_sae_config(saes: dict[str, Any]) -> dict[str, Any]:
    """The toy SAE's keys: defaults, then its own; one position per sample, so no BOS to skip."""
    own = saes["toy"]["sae"]
    defaults = dict(saes.get("defaults", {}))
    for width in ("d_sae", "expansion_factor"):  # its own width replaces the default's
        if width in own:
            defaults.pop("expansion_factor" if width == "d_sae" else "d_sae", None)
    return {**defaults, "skip_bos": False, **own}


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


def _check_saes(
    saes: dict[str, Any], config: dict[str, Any], archs: dict[str, Architecture], problems: list
) -> None:
    from mechflow.saes.config import SAEConfig  # torch-free

    def check_sae(where: str, keys: dict[str, Any], d_in: int | None, hook: str) -> None:
        # a width known only from the store (pretrained models, other hooks) is checked by the
        # step; here a large stand-in keeps the width-dependent checks from firing
        try:
            SAEConfig.from_dict({**keys, "d_in": d_in or 1 << 20, "hook_name": hook})
        except ValueError as err:
            problems.append(f"{where}: {err}")

    lm = saes.get("language_model")
    if lm:
        where = "experiments.saes.language_model"
        datasets = config.get("datasets", {})
        model = lm["model"]
        if model not in config.get("models", {}):
            problems.append(f"{where}.model: unknown model {model!r}")
        for key in ("dataset", "eval_dataset"):
            if lm[key] not in datasets:
                problems.append(f"{where}.{key}: unknown dataset {lm[key]!r}")
        arch = archs.get(model)
        for hook in lm["hooks"]:
            if arch is not None and hook not in hook_names(arch):
                problems.append(f"{where}.hooks: {model!r} has no hook {hook!r}")
        names = sae_sweep(saes)
        if not names:
            problems.append(f"{where}.sweeps: no SAE to train (give at least one architecture)")
        if lm.get("dashboard") and lm["dashboard"] not in names:
            problems.append(
                f"{where}.dashboard: {lm['dashboard']!r} is not in the sweep {sorted(names)}"
            )
        for name, keys in names.items():
            for hook in lm["hooks"]:
                width = hook_width(arch, hook) if arch is not None else None
                check_sae(f"{where}.sweeps ({name})", keys, width, hook)
    toy = saes.get("toy")
    if toy:
        where = "experiments.saes.toy"
        toys = (config.get("experiments", {}).get("superposition") or {}).get("toy_models", {})
        if toy["model"] not in toys:
            problems.append(
                f"{where}.model: unknown toy model {toy['model']!r} "
                "(define it under experiments.superposition.toy_models)"
            )
            return
        spec = toys[toy["model"]]
        n = spec.get("n_instances", 1)
        if not -n <= toy.get("instance", -1) < n:
            problems.append(f"{where}.instance: {toy['instance']} but the toy model has {n}")
        check_sae(f"{where}.sae", toy_sae_config(saes), spec["d_hidden"], "hook_hidden")


def expand_hooks(patterns: list[str], available: list[str]) -> list[str]:
    """Expand shell-style patterns (``blocks.*.attn.hook_pattern``) against a model's hook names."""
    out: list[str] = []
    for pattern in patterns:
        matched = fnmatch.filter(available, pattern)
        if not matched:
            raise ValueError(f"hook {pattern!r} matches no hook of the model")
        out += [name for name in matched if name not in out]
    return out


def _sequence_length(dataset: dict[str, Any]) -> int:
    if dataset["kind"] == "repeated_random":
        return 1 + 2 * dataset["half_len"]
    return dataset["seq_len"]


def check_config(config: dict[str, Any]) -> None:
    """Raise ConfigError listing every inconsistency (unknown names, sizes that do not fit)."""
    problems: list[str] = []
    datasets = config.get("datasets", {})
    models = config.get("models", {})
    archs: dict[str, Architecture] = {}

    def fits(where: str, dataset_name: str, model_name: str) -> None:
        arch = archs.get(model_name)
        dataset = datasets.get(dataset_name)
        if arch is None or dataset is None:
            return
        if _sequence_length(dataset) > arch.n_ctx:
            problems.append(
                f"{where}: dataset {dataset_name!r} has sequences of length "
                f"{_sequence_length(dataset)} > models.{model_name}.architecture.n_ctx={arch.n_ctx}"
            )
        if dataset["d_vocab"] > arch.d_vocab:
            problems.append(
                f"{where}: dataset {dataset_name!r} uses d_vocab={dataset['d_vocab']} > "
                f"models.{model_name}.architecture.d_vocab={arch.d_vocab}"
            )

    for name, dataset in datasets.items():
        if dataset["kind"] == "repeated_spans":
            lo, hi = dataset["span_len"]
            if lo > hi:
                problems.append(f"datasets.{name}.span_len: min {lo} > max {hi}")
            elif 2 * hi + 1 > dataset["seq_len"]:
                problems.append(
                    f"datasets.{name}.span_len: max {hi} too long for seq_len {dataset['seq_len']}"
                    " (need 2*max+1 <= seq_len)"
                )

    for name, spec in models.items():
        try:
            arch = architecture_of(spec)
        except ValueError as err:
            problems.append(f"models.{name}.{err}")
            continue
        if arch is None:
            continue
        archs[name] = arch
        training = spec["training"]
        if training["dataset"] not in datasets:
            problems.append(
                f"models.{name}.training.dataset: unknown dataset {training['dataset']!r}"
            )
        try:
            TrainingConfig.from_dict(training_config(training))
        except ValueError as err:
            problems.append(f"models.{name}.{err}")
        fits(f"models.{name}.training.dataset", training["dataset"], name)

    activations = config.get("activations", {})
    for name, hooks in activations.get("extra_hooks", {}).items():
        if name not in models:
            problems.append(f"activations.extra_hooks: unknown model {name!r}")
        elif name in archs:
            for hook in hooks:
                try:
                    expand_hooks([hook], hook_names(archs[name]))
                except ValueError:
                    problems.append(
                        f"activations.extra_hooks.{name}: unknown hook name {hook!r} for this "
                        f"architecture (e.g. {hook_names(archs[name])[2]!r})"
                    )

    induction = config.get("experiments", {}).get("induction")
    if induction:
        where = "experiments.induction"
        for model in induction["models"]:
            if model not in models:
                problems.append(f"{where}.models: unknown model {model!r}")
        for key in ("eval_dataset", "icl_dataset"):
            if induction[key] not in datasets:
                problems.append(f"{where}.{key}: unknown dataset {induction[key]!r}")
        eval_ds = datasets.get(induction["eval_dataset"])
        if eval_ds is not None and eval_ds["kind"] != "repeated_random":
            problems.append(
                f"{where}.eval_dataset: {induction['eval_dataset']!r} must be of kind repeated_random"
            )
        icl_ds = datasets.get(induction["icl_dataset"])
        early, late = induction.get("icl_early", 5), induction.get("icl_late", 60)
        if early >= late:
            problems.append(f"{where}: icl_early ({early}) must be < icl_late ({late})")
        if icl_ds is not None and late >= _sequence_length(icl_ds):
            problems.append(
                f"{where}.icl_late: {late} >= length {_sequence_length(icl_ds)} of "
                f"dataset {induction['icl_dataset']!r}"
            )
        for model in induction["models"]:
            fits(f"{where}.eval_dataset", induction["eval_dataset"], model)
            fits(f"{where}.icl_dataset", induction["icl_dataset"], model)

    grokking = config.get("experiments", {}).get("grokking")
    if grokking:
        _check_grokking(grokking, models, problems)

    superposition = config.get("experiments", {}).get("superposition")
    if superposition:
        _check_superposition(superposition, problems)

    saes = config.get("experiments", {}).get("saes")
    if saes:
        _check_saes(saes, config, archs, problems)

    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
