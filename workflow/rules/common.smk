# Config validation, derived lists, wildcard constraints and every input/params function.
import json
import re
import shutil

from snakemake.utils import validate

from mechflow.config_checks import (
    architecture_of,
    check_config,
    expand_hooks,
    grokking_architecture,
    grokking_training_config,
    sae_sweep,
    toy_sae_config,
    training_config,
)
from mechflow.models.config import hook_names


validate(config, schema="../schemas/config.schema.yaml")
check_config(config)


RESULTS = "results"
DATASETS = list(config.get("datasets", {}))
MODELS = list(config.get("models", {}))
TRAINED_MODELS = [m for m in MODELS if config["models"][m]["source"] == "trained"]
PRETRAINED_MODELS = [m for m in MODELS if config["models"][m]["source"] == "pretrained"]
INDUCTION = config["experiments"].get("induction")
INDUCTION_MODELS = INDUCTION["models"] if INDUCTION else []
GROKKING = config["experiments"].get("grokking")
GROKKING_RUNS = list(GROKKING["runs"]) if GROKKING else []
SUPERPOSITION = config["experiments"].get("superposition")
TOY_MODELS = list(SUPERPOSITION["toy_models"]) if SUPERPOSITION else []
SAES = config["experiments"].get("saes") or {}
SAE_LM = SAES.get("language_model")
SAE_TOY = SAES.get("toy")
SAE_SWEEP = sae_sweep(SAES)  # name -> SAEConfig keys, e.g. topk_16
SAE_HOOKS = SAE_LM["hooks"] if SAE_LM else []
TOY_HOOK = "hook_hidden"
TOY_SAE = None
if SAE_TOY:
    _toy_keys = toy_sae_config(SAES)
    _knob = "k" if _toy_keys["architecture"] in ("topk", "batchtopk") else "l1_coefficient"
    TOY_SAE = f"{_toy_keys['architecture']}_{_toy_keys[_knob]:g}"


def alternation(names):
    """A regex matching exactly these names (or nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    dataset=alternation(DATASETS),
    model=alternation(MODELS),
    run=alternation(GROKKING_RUNS),
    toy=alternation(TOY_MODELS),
    sae=alternation(list(SAE_SWEEP) + ([TOY_SAE] if TOY_SAE else [])),
    hook=alternation(SAE_HOOKS + [TOY_HOOK]),
    source=alternation(([SAE_LM["model"]] if SAE_LM else []) + ([SAE_TOY["model"]] if SAE_TOY else [])),


# --- devices --------------------------------------------------------------------------------
# A job runs on CUDA exactly when it holds a `gpu` resource, so the resource always matches what
# the step uses. Rules whose steps profit from a GPU ask for one when the host evaluating the
# rule has one (a local run on a GPU workstation); cluster profiles set `gpu` per rule with
# `set-resources`, and `--set-resources train_model:gpu=0` forces a rule onto the CPU.
GPU_HERE = int(shutil.which("nvidia-smi") is not None)  # NVIDIA driver on this host


def get_device(wildcards, resources):
    return "cuda" if int(resources.get("gpu", 0)) > 0 else "cpu"


# --- datasets ---------------------------------------------------------------------------------
def get_dataset_kind(wildcards):
    return config["datasets"][wildcards.dataset]["kind"]


def get_dataset_spec(wildcards):
    spec = {k: v for k, v in config["datasets"][wildcards.dataset].items() if k != "kind"}
    return json.dumps(spec, sort_keys=True)


def dataset_path(name):
    return f"{RESULTS}/datasets/{name}.npy"


# --- models -----------------------------------------------------------------------------------
def get_training_dataset(wildcards):
    return dataset_path(config["models"][wildcards.model]["training"]["dataset"])


def get_architecture(wildcards):
    return json.dumps(architecture_of(config["models"][wildcards.model]).to_dict(), sort_keys=True)


def get_training(wildcards):
    return json.dumps(training_config(config["models"][wildcards.model]["training"]), sort_keys=True)


def get_pretrained_name(wildcards):
    return config["models"][wildcards.model]["name"]


def get_pretrained_path_flag(wildcards):
    path = config["models"][wildcards.model].get("path")
    return f"--path {path!r}" if path else ""


def model_dir(name):
    return f"{RESULTS}/models/{name}"


def n_layers(model):
    """Layers of a model when known before it exists (trained models); None for pretrained."""
    arch = architecture_of(config["models"][model])
    return arch.n_layers if arch else None


# --- activations ------------------------------------------------------------------------------
ACTIVATIONS = config.get("activations", {})
PATTERN_HOOKS = "blocks.*.attn.hook_pattern"


def cache_hooks(model, dataset):
    """Hooks to cache: those the experiments read, plus the configured extras for the model."""
    patterns = []
    if INDUCTION and model in INDUCTION_MODELS and dataset == INDUCTION["eval_dataset"]:
        patterns.append(PATTERN_HOOKS)
    patterns += ACTIVATIONS.get("extra_hooks", {}).get(model, [])
    if SAE_LM and model == SAE_LM["model"] and dataset in (SAE_LM["dataset"], SAE_LM["eval_dataset"]):
        patterns += SAE_HOOKS
    arch = architecture_of(config["models"][model])
    return expand_hooks(patterns, hook_names(arch)) if arch else patterns


def get_cache_hook_flags(wildcards):
    return " ".join(f"--hook {h}" for h in cache_hooks(wildcards.model, wildcards.dataset))


def activation_store(model, dataset):
    return f"{RESULTS}/activations/{model}/{dataset}.zarr"


# --- induction experiment ---------------------------------------------------------------------
def induction_setting(key, default=None):
    return INDUCTION.get(key, default) if INDUCTION else default


def get_eval_tokens(wildcards):
    return dataset_path(INDUCTION["eval_dataset"])


def get_icl_tokens(wildcards):
    return dataset_path(INDUCTION["icl_dataset"])


def get_eval_store(wildcards):
    return activation_store(wildcards.model, INDUCTION["eval_dataset"])


def get_half_len(wildcards):
    return config["datasets"][INDUCTION["eval_dataset"]]["half_len"]


INDUCTION_FIGURES = [
    "head_scores",
    "loss_by_position",
    "head_ablation",
    "composition",
    "copying",
    "phase_change",
]


def induction_figures(model):
    figures = list(INDUCTION_FIGURES)
    if model in PRETRAINED_MODELS:
        figures.remove("phase_change")  # no checkpoints of a pretrained model
    if n_layers(model) == 1:
        figures.remove("composition")  # composition needs two layers
    return figures


# --- grokking experiment ----------------------------------------------------------------------
GROKKING_FIGURES = ["grokking_curves", "embedding_fourier", "activation_maps", "progress_measures"]


def grokking_run(wildcards):
    return GROKKING["runs"][wildcards.run]


def grokking_setting(key):
    return GROKKING[key] if GROKKING else None


def get_modulus(wildcards):
    return grokking_run(wildcards)["modulus"]


def get_train_fraction(wildcards):
    return grokking_run(wildcards)["train_fraction"]


def get_data_seed(wildcards):
    return grokking_run(wildcards)["data_seed"]


def get_grokking_architecture(wildcards):
    arch = grokking_architecture(grokking_run(wildcards)).to_dict()
    return json.dumps(arch, sort_keys=True)


def get_grokking_training(wildcards):
    return json.dumps(grokking_training_config(grokking_run(wildcards)["training"]), sort_keys=True)


def get_progress_range_flags(wildcards):
    first, last = grokking_run(wildcards)["progress_range"]
    return f"--first-epoch {first}" + (f" --last-epoch {last}" if last is not None else "")


def get_enforce_flag(wildcards):
    return "--enforce" if GROKKING["enforce_checks"] else ""


# --- superposition experiment -----------------------------------------------------------------
def get_toy_model_config(wildcards):
    return json.dumps(SUPERPOSITION["toy_models"][wildcards.toy], sort_keys=True)


def get_phase_map_config(wildcards):
    return json.dumps(SUPERPOSITION.get("phase_map", {}), sort_keys=True)


def superposition_setting(key):
    return SUPERPOSITION[key] if SUPERPOSITION else None


# --- sparse autoencoders ----------------------------------------------------------------------
def get_sae_store(wildcards):
    if SAE_TOY and wildcards.source == SAE_TOY["model"]:
        return f"{RESULTS}/saes/{wildcards.source}/{TOY_HOOK}.zarr"
    return activation_store(wildcards.source, SAE_LM["dataset"])


def get_sae_config(wildcards):
    if SAE_TOY and wildcards.source == SAE_TOY["model"]:
        return json.dumps(toy_sae_config(SAES), sort_keys=True)
    return json.dumps(SAE_SWEEP[wildcards.sae], sort_keys=True)


def sae_dir(source, hook, sae):
    return f"{RESULTS}/saes/{source}/{hook}/{sae}"


def get_sae_eval_store(wildcards):
    return activation_store(wildcards.model, SAE_LM["eval_dataset"])


def get_sae_eval_tokens(wildcards):
    return dataset_path(SAE_LM["eval_dataset"])


def sae_lm_setting(key):
    return SAE_LM[key] if SAE_LM else None


def sae_toy_setting(key):
    return SAE_TOY[key] if SAE_TOY else None


def get_sweep_metrics(wildcards):
    return [f"{sae_dir(wildcards.model, wildcards.hook, sae)}_metrics.csv" for sae in SAE_SWEEP]


def get_all_targets(wildcards=None):
    targets = []
    if SAE_LM:
        for hook in SAE_HOOKS:
            figures = f"{RESULTS}/figures/saes/{SAE_LM['model']}/{hook}"
            targets.append(f"{figures}/frontier.png")
            if SAE_LM.get("dashboard"):
                targets.append(f"{figures}/dashboard_{SAE_LM['dashboard']}.png")
    if SAE_TOY:
        targets.append(f"{RESULTS}/figures/saes/{SAE_TOY['model']}/recovery_{TOY_SAE}.png")
    if SUPERPOSITION:
        targets.append(f"{RESULTS}/figures/superposition/phase_map.png")
    for toy in TOY_MODELS:
        for figure in ("superposition", "dimensionality"):
            targets.append(f"{RESULTS}/figures/superposition/{toy}/{figure}.png")
    for run in GROKKING_RUNS:
        targets.append(f"{RESULTS}/grokking/{run}/checks.csv")
        for figure in GROKKING_FIGURES:
            targets.append(f"{RESULTS}/figures/grokking/{run}/{figure}.png")
    for model in INDUCTION_MODELS:
        for figure in induction_figures(model):
            targets.append(f"{RESULTS}/figures/induction/{model}/{figure}.png")
    for model, hooks in ACTIVATIONS.get("extra_hooks", {}).items():
        if hooks and INDUCTION:
            targets.append(activation_store(model, INDUCTION["eval_dataset"]))
    return targets


def get_eval_vocab(wildcards):
    return config["datasets"][INDUCTION["eval_dataset"]]["d_vocab"]
