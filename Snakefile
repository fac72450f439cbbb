# mechflow: mechanistic-interpretability papers, end to end.
#
# Results path scheme (everything under results/ is produced by this workflow):
#   results/datasets/{dataset}.npy                       token datasets (seq x pos, int32)
#   results/models/{model}/model.safetensors, config.json trained or imported models (shared)
#   results/models/{model}/train_log.csv, checkpoints/    loss log and weights over training
#   results/activations/{model}/{dataset}.zarr            zarr v3 activation stores, one array per hook
#   results/{experiment}/...                             what one experiment owns: its tables, and
#                                                        its own models (grokking/models/{run}/,
#                                                        superposition/models/{toy}/, saes/{model}/{hook}/{sae}/)
#   results/figures/{experiment}/...                     figures (the report gathers them, and each
#                                                        experiment's headline tables as HTML)
#   logs/{rule}/...  benchmarks/{rule}/...                per-job logs and timings
#
# Experiments are registered in mechflow.experiments.EXPERIMENTS; each has its rule file
# workflow/rules/{experiment}.smk, included by common.smk's registry loop below.

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


for _experiment in EXPERIMENTS:

    include: f"workflow/rules/{_experiment}.smk"


rule all:
    default_target: True
    input:
        W.targets(),


# One target per experiment (`snakemake grokking`) and per model or run it covers
# (`snakemake induction_attn_only_2l`); `snakemake --list-target-rules` lists them.
for _experiment in EXPERIMENT.values():
    if not _experiment.enabled:
        continue

    rule:
        name:
            _experiment.name
        input:
            _experiment.targets(),

    for _group, _targets in _experiment.target_groups().items():

        rule:
            name:
                _group
            input:
                _targets,
