# Indirect object identification (Wang et al. 2022): a model's IOI circuit found by patching.
# Tables under results/ioi/{model}/, figures under results/figures/ioi/{model}/.
#
# The patching sweeps are split into `experiments.ioi.shards` jobs (blocks of layers; one
# cluster job each on the SLURM profile) and gathered into one table; a shard file is written
# atomically, so a killed shard leaves nothing that gather_ioi_patching could take.

IOI = EXPERIMENT["ioi"]  # mechflow.experiments.ioi.workflow
IOI_MODEL = f"{RESULTS}/models/{{model}}/model.safetensors"
IOI_PROMPTS = f"{RESULTS}/ioi/{{model}}/prompts.npz"
from mechflow.experiments.ioi.workflow import FIGURE_TABLES as IOI_FIGURE_TABLES
from mechflow.experiments.ioi.workflow import TABLES as IOI_TABLES


localrules:
    gather_ioi_patching,
    check_ioi,
    tabulate_ioi_accuracy,
    tabulate_ioi_head_classes,
    tabulate_ioi_checks,


rule make_ioi_prompts:
    input:
        unpack(IOI.prompt_inputs),
    output:
        IOI_PROMPTS,
    params:
        spec=IOI.spec_json,
        flags=IOI.prompt_flags,
        prompts=IOI.setting("prompts"),
        aligned=IOI.setting("aligned_prompts"),
        seed=IOI.setting("seed"),
    conda:
        "../../environment.yml"
    log:
        "logs/make_ioi_prompts/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.make_ioi_prompts --spec {params.spec:q} {params.flags}"
        " --prompts {params.prompts} --aligned-prompts {params.aligned} --seed {params.seed}"
        " --out {output:q} > {log:q} 2>&1"


rule evaluate_ioi:
    input:
        weights=IOI_MODEL,
        prompts=IOI_PROMPTS,
    output:
        f"{RESULTS}/ioi/{{model}}/accuracy.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        batch_size=IOI.setting("batch_size"),
    conda:
        "../../environment.yml"
    log:
        "logs/evaluate_ioi/{model}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.evaluate_ioi --model-dir {params.model_dir:q}"
        " --prompts {input.prompts:q} --batch-size {params.batch_size} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"


rule patch_ioi:
    input:
        weights=IOI_MODEL,
        prompts=IOI_PROMPTS,
    output:
        f"{RESULTS}/ioi/{{model}}/patching/shard_{{shard}}_of_{{shards}}.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        batch_size=IOI.setting("batch_size"),
    conda:
        "../../environment.yml"
    log:
        "logs/patch_ioi/{model}_{shard}_of_{shards}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m mechflow.steps.patch_ioi --model-dir {params.model_dir:q}"
        " --prompts {input.prompts:q} --shard {wildcards.shard} --shards {wildcards.shards}"
        " --batch-size {params.batch_size} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule gather_ioi_patching:
    input:
        IOI.shard_files,
    output:
        f"{RESULTS}/ioi/{{model}}/patching.csv",
    conda:
        "../../environment.yml"
    log:
        "logs/gather_ioi_patching/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.gather_sweep --shards {input:q} --out {output:q} > {log:q} 2>&1"


rule classify_ioi_heads:
    input:
        weights=IOI_MODEL,
        prompts=IOI_PROMPTS,
    output:
        classes=f"{RESULTS}/ioi/{{model}}/head_classes.csv",
        knockouts=f"{RESULTS}/ioi/{{model}}/knockouts.csv",
        faithfulness=f"{RESULTS}/ioi/{{model}}/faithfulness.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        attention=IOI.setting("attention_threshold"),
        share=IOI.setting("share"),
        min_effect=IOI.setting("min_effect"),
        random_circuits=IOI.setting("random_circuits"),
        seed=IOI.setting("seed"),
        batch_size=IOI.setting("batch_size"),
    conda:
        "../../environment.yml"
    log:
        "logs/classify_ioi_heads/{model}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m mechflow.steps.classify_ioi_heads --model-dir {params.model_dir:q}"
        " --prompts {input.prompts:q} --attention-threshold {params.attention}"
        " --share {params.share} --min-effect {params.min_effect}"
        " --random-circuits {params.random_circuits} --seed {params.seed}"
        " --batch-size {params.batch_size} --threads {threads}"
        " --classes-out {output.classes:q} --knockouts-out {output.knockouts:q}"
        " --faithfulness-out {output.faithfulness:q} > {log:q} 2>&1"


rule check_ioi:
    input:
        accuracy=f"{RESULTS}/ioi/{{model}}/accuracy.csv",
        classes=f"{RESULTS}/ioi/{{model}}/head_classes.csv",
        faithfulness=f"{RESULTS}/ioi/{{model}}/faithfulness.csv",
    output:
        f"{RESULTS}/ioi/{{model}}/checks.csv",
    params:
        reference=IOI.reference,
        min_accuracy=IOI.setting("min_accuracy"),
        enforce=IOI.enforce_flag,
    conda:
        "../../environment.yml"
    log:
        "logs/check_ioi/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.check_ioi --accuracy {input.accuracy:q}"
        " --classes {input.classes:q} --faithfulness {input.faithfulness:q}"
        " --reference {params.reference} --min-accuracy {params.min_accuracy} {params.enforce}"
        " --out {output:q} > {log:q} 2>&1"


# Figures, drawn from the tables only (mechflow.experiments.ioi.figures).
for _figure, _tables in IOI_FIGURE_TABLES.items():

    rule:
        name:
            f"plot_ioi_{_figure}"
        input:
            **{t: f"{RESULTS}/ioi/{{model}}/{t}.csv" for t in _tables},
        output:
            png=report(
                f"{RESULTS}/figures/ioi/{{model}}/{_figure}.png",
                caption=f"../report/ioi/{_figure}.rst",
                category="IOI",
                subcategory="{model}",
            ),
            svg=f"{RESULTS}/figures/ioi/{{model}}/{_figure}.svg",
        params:
            figure=f"ioi.{_figure}",
            tables=table_flags,
            options=option_flags(model="{model}"),
        conda:
            "../../environment.yml"
        log:
            f"logs/plot_ioi_{_figure}/{{model}}.log",
        localrule: True
        resources:
            mem_mb=1000,
            runtime=5,
        shell:
            PLOT_OPTIONS_SHELL


# The headline tables in the report (mechflow.steps.render_table).
for _table, (_title, _columns) in IOI_TABLES.items():

    rule:
        name:
            f"tabulate_ioi_{_table}"
        input:
            f"{RESULTS}/ioi/{{model}}/{_table}.csv",
        output:
            report(
                f"{RESULTS}/ioi/{{model}}/{_table}.html",
                caption=f"../report/ioi/{_table}_table.rst",
                category="IOI",
                subcategory="{model}",
            ),
        params:
            title=f"{{model}}: {_title}",
            columns=" ".join(_columns),
        conda:
            "../../environment.yml"
        log:
            f"logs/tabulate_ioi_{_table}/{{model}}.log",
        resources:
            mem_mb=1000,
            runtime=5,
        shell:
            "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
            " --show {params.columns} --out {output:q} > {log:q} 2>&1"
