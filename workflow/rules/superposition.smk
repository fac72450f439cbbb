# Toy Models of Superposition (Elhage et al. 2022): batches of toy ReLU-output models across
# feature sparsity, their WᵀW geometry and feature dimensionality, and the n=2, m=1 phase map.

SUPERPOSITION = EXPERIMENT["superposition"]  # mechflow.experiments.superposition.workflow


localrules:
    plot_superposition,
    plot_dimensionality,
    plot_superposition_phases,
    tabulate_superposition_instances,


rule train_toy_model:
    output:
        weights=f"{RESULTS}/superposition/models/{{toy}}/model.safetensors",
        config=f"{RESULTS}/superposition/models/{{toy}}/cfg.json",
        loss_log=f"{RESULTS}/superposition/models/{{toy}}/train_log.csv",
    params:
        config=SUPERPOSITION.toy_model_json,
        out_dir=subpath(output.weights, parent=True),
    conda:
        "../../environment.yml"
    log:
        "logs/train_toy_model/{toy}.log",
    benchmark:
        "benchmarks/train_toy_model/{toy}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m mechflow.steps.train_toy_model --config {params.config:q} --threads {threads}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule analyze_superposition:
    input:
        weights=f"{RESULTS}/superposition/models/{{toy}}/model.safetensors",
        config=f"{RESULTS}/superposition/models/{{toy}}/cfg.json",
    output:
        wtw=f"{RESULTS}/superposition/{{toy}}/wtw.csv",
        features=f"{RESULTS}/superposition/{{toy}}/features.csv",
        instances=f"{RESULTS}/superposition/{{toy}}/instances.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        threshold=SUPERPOSITION.setting("represented_threshold"),
    conda:
        "../../environment.yml"
    log:
        "logs/analyze_superposition/{toy}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.analyze_superposition --model-dir {params.model_dir:q}"
        " --threshold {params.threshold} --wtw {output.wtw:q} --features {output.features:q}"
        " --instances {output.instances:q} > {log:q} 2>&1"


rule map_superposition_phases:
    output:
        f"{RESULTS}/superposition/phase_map.csv",
    params:
        config=SUPERPOSITION.phase_map_json,
    conda:
        "../../environment.yml"
    log:
        "logs/map_superposition_phases/phase_map.log",
    benchmark:
        "benchmarks/map_superposition_phases/phase_map.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m mechflow.steps.map_superposition_phases --config {params.config:q}"
        " --threads {threads} --out {output:q} > {log:q} 2>&1"


rule plot_superposition:
    input:
        wtw=f"{RESULTS}/superposition/{{toy}}/wtw.csv",
        features=f"{RESULTS}/superposition/{{toy}}/features.csv",
    output:
        png=report(
            f"{RESULTS}/figures/superposition/{{toy}}/superposition.png",
            caption="../report/superposition/superposition.rst",
            category="Superposition",
            subcategory="{toy}",
        ),
        svg=f"{RESULTS}/figures/superposition/{{toy}}/superposition.svg",
    params:
        figure="superposition.superposition",
        tables=table_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_superposition/{toy}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_SHELL


rule plot_dimensionality:
    input:
        features=f"{RESULTS}/superposition/{{toy}}/features.csv",
        instances=f"{RESULTS}/superposition/{{toy}}/instances.csv",
    output:
        png=report(
            f"{RESULTS}/figures/superposition/{{toy}}/dimensionality.png",
            caption="../report/superposition/dimensionality.rst",
            category="Superposition",
            subcategory="{toy}",
        ),
        svg=f"{RESULTS}/figures/superposition/{{toy}}/dimensionality.svg",
    params:
        figure="superposition.dimensionality",
        tables=table_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_dimensionality/{toy}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_SHELL


rule plot_superposition_phases:
    input:
        table=f"{RESULTS}/superposition/phase_map.csv",
    output:
        png=report(
            f"{RESULTS}/figures/superposition/phase_map.png",
            caption="../report/superposition/superposition_phases.rst",
            category="Superposition",
            subcategory="phase map",
        ),
        svg=f"{RESULTS}/figures/superposition/phase_map.svg",
    params:
        figure="superposition.superposition_phases",
        tables=table_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_superposition_phases/phase_map.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_SHELL


# The headline numbers as a table in the report (mechflow.steps.render_table: HTML, since the
# report shows a CSV only as a download).
rule tabulate_superposition_instances:
    input:
        f"{RESULTS}/superposition/{{toy}}/instances.csv",
    output:
        report(
            f"{RESULTS}/superposition/{{toy}}/instances.html",
            caption="../report/superposition/instances_table.rst",
            category="Superposition",
            subcategory="{toy}",
        ),
    params:
        title="{toy}: superposition per instance (feature probability)",
    conda:
        "../../environment.yml"
    log:
        "logs/tabulate_superposition_instances/{toy}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
        " --show instance feature_probability sparsity n_features d_hidden dims_per_feature"
        " features_per_dim n_represented fraction_represented --out {output:q} > {log:q} 2>&1"
