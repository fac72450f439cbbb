# Grokking modular addition (Nanda et al. 2023): full-batch training with checkpoints, then the
# Fourier analyses and progress measures, all computed afterwards from the saved weights.

GROKKING = EXPERIMENT["grokking"]  # mechflow.experiments.grokking.workflow
GROKKING_MODEL = f"{RESULTS}/grokking/models/{{run}}"  # a run's model belongs to the experiment


localrules:
    check_grokking,
    plot_grokking_curves,
    plot_embedding_fourier,
    plot_activation_maps,
    plot_progress_measures,
    tabulate_grokking_checks,
    tabulate_key_frequencies,


rule train_grokking_model:
    output:
        weights=f"{GROKKING_MODEL}/model.safetensors",
        config=f"{GROKKING_MODEL}/config.json",
        loss_log=f"{GROKKING_MODEL}/train_log.csv",
        split=f"{GROKKING_MODEL}/split.npz",
        checkpoints=directory(f"{GROKKING_MODEL}/checkpoints"),
    params:
        device=get_device,
        modulus=GROKKING.modulus,
        train_fraction=GROKKING.train_fraction,
        data_seed=GROKKING.data_seed,
        architecture=GROKKING.architecture_json,
        training=GROKKING.training_json,
        out_dir=subpath(output.weights, parent=True),
    conda:
        "../../environment.yml"
    log:
        "logs/train_grokking_model/{run}.log",
    benchmark:
        "benchmarks/train_grokking_model/{run}.tsv"
    threads: 2
    resources:
        gpu=GPU_HERE,
        mem_mb=4000,
        runtime=120,
    shell:
        "python -m mechflow.steps.train_grokking_model --modulus {params.modulus}"
        " --train-fraction {params.train_fraction} --data-seed {params.data_seed}"
        " --architecture {params.architecture:q} --training {params.training:q}"
        " --threads {threads} --device {params.device} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule analyze_embedding_fourier:
    input:
        weights=f"{GROKKING_MODEL}/model.safetensors",
        split=f"{GROKKING_MODEL}/split.npz",
    output:
        f"{RESULTS}/grokking/{{run}}/embedding_fourier.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
    conda:
        "../../environment.yml"
    log:
        "logs/analyze_embedding_fourier/{run}.log",
    group:
        "grokking_{run}"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.analyze_embedding_fourier --model-dir {params.model_dir:q}"
        " --out {output:q} > {log:q} 2>&1"


rule analyze_neurons_fourier:
    input:
        weights=f"{GROKKING_MODEL}/model.safetensors",
        split=f"{GROKKING_MODEL}/split.npz",
        embedding=f"{RESULTS}/grokking/{{run}}/embedding_fourier.csv",
    output:
        neurons=f"{RESULTS}/grokking/{{run}}/neuron_fourier.csv",
        attention=f"{RESULTS}/grokking/{{run}}/attention_fourier.csv",
        key_table=f"{RESULTS}/grokking/{{run}}/key_frequencies.csv",
        maps=f"{RESULTS}/grokking/{{run}}/activation_maps.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        out_dir=subpath(output.key_table, parent=True),
        min_neuron_share=GROKKING.setting("min_neuron_share"),
        min_fraction=GROKKING.setting("min_fraction"),
    conda:
        "../../environment.yml"
    log:
        "logs/analyze_neurons_fourier/{run}.log",
    group:
        "grokking_{run}"
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m mechflow.steps.analyze_neurons_fourier --model-dir {params.model_dir:q}"
        " --embedding {input.embedding:q} --min-neuron-share {params.min_neuron_share}"
        " --min-fraction {params.min_fraction} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule measure_progress:
    input:
        weights=f"{GROKKING_MODEL}/model.safetensors",
        split=f"{GROKKING_MODEL}/split.npz",
        checkpoints=f"{GROKKING_MODEL}/checkpoints",
        key_table=f"{RESULTS}/grokking/{{run}}/key_frequencies.csv",
    output:
        progress=f"{RESULTS}/grokking/{{run}}/progress.csv",
        phases=f"{RESULTS}/grokking/{{run}}/phases.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        range_flags=GROKKING.progress_range_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/measure_progress/{run}.log",
    benchmark:
        "benchmarks/measure_progress/{run}.tsv"
    group:
        "grokking_{run}"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m mechflow.steps.measure_progress --model-dir {params.model_dir:q}"
        " --key-frequencies {input.key_table:q} {params.range_flags} --threads {threads}"
        " --out {output.progress:q} --phases {output.phases:q} > {log:q} 2>&1"


rule check_grokking:
    input:
        progress=f"{RESULTS}/grokking/{{run}}/progress.csv",
        phases=f"{RESULTS}/grokking/{{run}}/phases.csv",
        key_table=f"{RESULTS}/grokking/{{run}}/key_frequencies.csv",
    output:
        f"{RESULTS}/grokking/{{run}}/checks.csv",
    params:
        enforce=GROKKING.enforce_flag,
    conda:
        "../../environment.yml"
    log:
        "logs/check_grokking/{run}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.check_grokking --progress {input.progress:q}"
        " --phases {input.phases:q} --key-frequencies {input.key_table:q} {params.enforce}"
        " --out {output:q} > {log:q} 2>&1"


rule plot_grokking_curves:
    input:
        log=f"{GROKKING_MODEL}/train_log.csv",
        phases=f"{RESULTS}/grokking/{{run}}/phases.csv",
    output:
        png=report(
            f"{RESULTS}/figures/grokking/{{run}}/grokking_curves.png",
            caption="../report/grokking/grokking_curves.rst",
            category="Grokking",
            subcategory="{run}",
        ),
        svg=f"{RESULTS}/figures/grokking/{{run}}/grokking_curves.svg",
    params:
        figure="grokking.grokking_curves",
        tables=table_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_grokking_curves/{run}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_SHELL


rule plot_embedding_fourier:
    input:
        table=f"{RESULTS}/grokking/{{run}}/embedding_fourier.csv",
        key_frequencies=f"{RESULTS}/grokking/{{run}}/key_frequencies.csv",
    output:
        png=report(
            f"{RESULTS}/figures/grokking/{{run}}/embedding_fourier.png",
            caption="../report/grokking/embedding_fourier.rst",
            category="Grokking",
            subcategory="{run}",
        ),
        svg=f"{RESULTS}/figures/grokking/{{run}}/embedding_fourier.svg",
    params:
        figure="grokking.embedding_fourier",
        tables=table_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_embedding_fourier/{run}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_SHELL


rule plot_activation_maps:
    input:
        table=f"{RESULTS}/grokking/{{run}}/activation_maps.csv",
    output:
        png=report(
            f"{RESULTS}/figures/grokking/{{run}}/activation_maps.png",
            caption="../report/grokking/activation_maps.rst",
            category="Grokking",
            subcategory="{run}",
        ),
        svg=f"{RESULTS}/figures/grokking/{{run}}/activation_maps.svg",
    params:
        figure="grokking.activation_maps",
        tables=table_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_activation_maps/{run}.log",
    resources:
        mem_mb=2000,
        runtime=5,
    shell:
        PLOT_SHELL


rule plot_progress_measures:
    input:
        table=f"{RESULTS}/grokking/{{run}}/progress.csv",
        phases=f"{RESULTS}/grokking/{{run}}/phases.csv",
    output:
        png=report(
            f"{RESULTS}/figures/grokking/{{run}}/progress_measures.png",
            caption="../report/grokking/progress_measures.rst",
            category="Grokking",
            subcategory="{run}",
        ),
        svg=f"{RESULTS}/figures/grokking/{{run}}/progress_measures.svg",
    params:
        figure="grokking.progress_measures",
        tables=table_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_progress_measures/{run}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_SHELL


# The headline numbers as tables in the report (mechflow.steps.render_table: HTML, since the
# report shows a CSV only as a download).
rule tabulate_grokking_checks:
    input:
        f"{RESULTS}/grokking/{{run}}/checks.csv",
    output:
        report(
            f"{RESULTS}/grokking/{{run}}/checks.html",
            caption="../report/grokking/checks_table.rst",
            category="Grokking",
            subcategory="{run}",
        ),
    params:
        title="{run}: the paper's claims, checked",
    conda:
        "../../environment.yml"
    log:
        "logs/tabulate_grokking_checks/{run}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
        " --show check value threshold passed meaning --out {output:q} > {log:q} 2>&1"


rule tabulate_key_frequencies:
    input:
        f"{RESULTS}/grokking/{{run}}/key_frequencies.csv",
    output:
        report(
            f"{RESULTS}/grokking/{{run}}/key_frequencies.html",
            caption="../report/grokking/key_frequencies_table.rst",
            category="Grokking",
            subcategory="{run}",
        ),
    params:
        title="{run}: key frequencies",
    conda:
        "../../environment.yml"
    log:
        "logs/tabulate_key_frequencies/{run}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
        " --show frequency n_neurons neuron_share embedding_share key_fraction"
        " --out {output:q} > {log:q} 2>&1"
