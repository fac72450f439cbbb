# mechflow: mechanistic-interpretability papers, end to end.
#
# Results path scheme (everything under results/ is produced by this workflow):
#   results/datasets/{dataset}.npy                       token datasets (seq x pos, int32)
#   results/models/{model}/model.safetensors, config.json trained or imported models
#   results/models/{model}/train_log.csv, checkpoints/    loss log and weights over training
#   results/activations/{model}/{dataset}.zarr            zarr v3 activation stores, one array per hook
#   results/models/{run}/split.npz                        a grokking run's train/test split
#   results/superposition/models/{toy}/                    toy models of superposition
#   results/saes/{model}/{hook}/{sae}/                    SAEs (SAELens layout), logs, metrics
#   results/{experiment}/{model}/{analysis}.csv           tidy analysis tables
#   results/figures/{experiment}/{model}/{figure}.png|svg figures (the report gathers the PNGs)
#   logs/{rule}/...  benchmarks/{rule}/...                per-job logs and timings

from snakemake.utils import min_version

min_version("9.0")


# A config passed with --configfile replaces the default instead of being merged into it, so a
# user's config never inherits the default's models or caches.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/induction.smk"
include: "workflow/rules/grokking.smk"
include: "workflow/rules/superposition.smk"
include: "workflow/rules/saes.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        get_all_targets(),
