# Sparse autoencoders (Bricken et al. 2023 and successors) trained from activation stores: a
# sweep of architectures and sparsities on a language model's hook, evaluated by reconstruction
# and CE loss recovered; and one SAE on a toy model's hidden layer, scored against the known
# features. The trainer reads any store; it does not know which model made it.

from mechflow.experiments.saes.workflow import TOY_HOOK

SAES = EXPERIMENT["saes"]  # mechflow.experiments.saes.workflow


localrules:
    plot_sae_frontier,
    plot_latent_dashboard,
    plot_toy_recovery,
    tabulate_sae_metrics,


rule cache_toy_activations:
    input:
        weights=f"{RESULTS}/superposition/models/{{toy}}/model.safetensors",
        config=f"{RESULTS}/superposition/models/{{toy}}/cfg.json",
    output:
        directory(f"{RESULTS}/saes/{{toy}}/{TOY_HOOK}.zarr"),
    params:
        model_dir=subpath(input.weights, parent=True),
        instance=SAES.toy_setting("instance"),
        n_samples=SAES.toy_setting("n_samples"),
        seed=SAES.toy_setting("seed"),
    conda:
        "../../environment.yml"
    log:
        "logs/cache_toy_activations/{toy}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.cache_toy_activations --model-dir {params.model_dir:q}"
        " --instance {params.instance} --n-samples {params.n_samples} --seed {params.seed}"
        " --out {output:q} > {log:q} 2>&1"


rule train_sae:
    input:
        SAES.train_store,
    output:
        sae=directory(f"{RESULTS}/saes/{{source}}/{{hook}}/{{sae}}"),
        train_log=f"{RESULTS}/saes/{{source}}/{{hook}}/{{sae}}_train_log.csv",
    params:
        device=get_device,
        config=SAES.sae_json,
    conda:
        "../../environment.yml"
    log:
        "logs/train_sae/{source}/{hook}/{sae}.log",
    benchmark:
        "benchmarks/train_sae/{source}/{hook}/{sae}.tsv"
    threads: 1
    resources:
        gpu=GPU_HERE,
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m mechflow.steps.train_sae --store {input:q} --hook {wildcards.hook}"
        " --sae-config {params.config:q} --threads {threads} --device {params.device}"
        " --log {output.train_log:q} --out {output.sae:q} > {log:q} 2>&1"


rule evaluate_sae:
    input:
        sae=f"{RESULTS}/saes/{{model}}/{{hook}}/{{sae}}",
        store=SAES.eval_store,
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        tokens=SAES.eval_tokens,
    output:
        f"{RESULTS}/saes/{{model}}/{{hook}}/{{sae}}_metrics.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        max_sequences=SAES.lm_setting("eval_max_sequences"),
    conda:
        "../../environment.yml"
    log:
        "logs/evaluate_sae/{model}/{hook}/{sae}.log",
    threads: 1
    group:
        "sae_evaluations"
    resources:
        gpu=GPU_HERE,
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m mechflow.steps.evaluate_sae --sae {input.sae:q} --store {input.store:q}"
        " --model-dir {params.model_dir:q} --tokens {input.tokens:q}"
        " --max-sequences {params.max_sequences} --threads {threads} --device {params.device}"
        " --out {output:q} > {log:q} 2>&1"


rule summarize_sae_latents:
    input:
        sae=f"{RESULTS}/saes/{{model}}/{{hook}}/{{sae}}",
        store=SAES.eval_store,
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        tokenizer=SAES.tokenizer,
    output:
        contexts=f"{RESULTS}/saes/{{model}}/{{hook}}/{{sae}}_latents/contexts.csv",
        histograms=f"{RESULTS}/saes/{{model}}/{{hook}}/{{sae}}_latents/histograms.csv",
        logits=f"{RESULTS}/saes/{{model}}/{{hook}}/{{sae}}_latents/logits.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        device=get_device,
        n_latents=SAES.lm_setting("n_dashboard_latents"),
        tokenizer=SAES.tokenizer_flag,
    conda:
        "../../environment.yml"
    log:
        "logs/summarize_sae_latents/{model}/{hook}/{sae}.log",
    threads: 1
    group:
        "sae_evaluations"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m mechflow.steps.summarize_sae_latents --sae {input.sae:q} --store {input.store:q}"
        " --model-dir {params.model_dir:q} --n-latents {params.n_latents} {params.tokenizer}"
        " --threads {threads}"
        " --device {params.device} --contexts {output.contexts:q} --histograms {output.histograms:q}"
        " --logits {output.logits:q} > {log:q} 2>&1"


rule evaluate_toy_sae:
    input:
        sae=f"{RESULTS}/saes/{{toy}}/{TOY_HOOK}/{{sae}}",
        weights=f"{RESULTS}/superposition/models/{{toy}}/model.safetensors",
    output:
        f"{RESULTS}/saes/{{toy}}/{TOY_HOOK}/{{sae}}_recovery.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        threshold=SAES.toy_setting("recovery_threshold"),
        represented=EXPERIMENT["superposition"].setting("represented_threshold"),
    conda:
        "../../environment.yml"
    log:
        "logs/evaluate_toy_sae/{toy}/{sae}.log",
    group:
        "sae_evaluations"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.evaluate_toy_sae --sae {input.sae:q} --model-dir {params.model_dir:q}"
        " --threshold {params.threshold} --represented {params.represented}"
        " --out {output:q} > {log:q} 2>&1"


rule plot_sae_frontier:
    input:
        metrics=SAES.sweep_metrics,
    output:
        png=report(
            f"{RESULTS}/figures/saes/{{model}}/{{hook}}/frontier.png",
            caption="../report/saes/sae_frontier.rst",
            category="Sparse autoencoders",
            subcategory="{model} {hook}",
        ),
        svg=f"{RESULTS}/figures/saes/{{model}}/{{hook}}/frontier.svg",
    params:
        figure="saes.sae_frontier",
        tables=table_flags,
        options=option_flags(model="{model}"),
    conda:
        "../../environment.yml"
    log:
        "logs/plot_sae_frontier/{model}/{hook}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_OPTIONS_SHELL


rule plot_latent_dashboard:
    input:
        contexts=f"{RESULTS}/saes/{{model}}/{{hook}}/{{sae}}_latents/contexts.csv",
        histograms=f"{RESULTS}/saes/{{model}}/{{hook}}/{{sae}}_latents/histograms.csv",
        logits=f"{RESULTS}/saes/{{model}}/{{hook}}/{{sae}}_latents/logits.csv",
    output:
        png=report(
            f"{RESULTS}/figures/saes/{{model}}/{{hook}}/dashboard_{{sae}}.png",
            caption="../report/saes/latent_dashboard.rst",
            category="Sparse autoencoders",
            subcategory="{model} {hook}",
        ),
        svg=f"{RESULTS}/figures/saes/{{model}}/{{hook}}/dashboard_{{sae}}.svg",
    params:
        figure="saes.latent_dashboard",
        tables=table_flags,
        options=option_flags(model="{model}", hook="{hook}", sae="{sae}"),
    conda:
        "../../environment.yml"
    log:
        "logs/plot_latent_dashboard/{model}/{hook}/{sae}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_OPTIONS_SHELL


rule plot_toy_recovery:
    input:
        table=f"{RESULTS}/saes/{{toy}}/{TOY_HOOK}/{{sae}}_recovery.csv",
    output:
        png=report(
            f"{RESULTS}/figures/saes/{{toy}}/recovery_{{sae}}.png",
            caption="../report/saes/toy_recovery.rst",
            category="Sparse autoencoders",
            subcategory="{toy}",
        ),
        svg=f"{RESULTS}/figures/saes/{{toy}}/recovery_{{sae}}.svg",
    params:
        figure="saes.toy_recovery",
        tables=table_flags,
        options=option_flags(model="{toy}", threshold=SAES.toy_setting("recovery_threshold")),
    conda:
        "../../environment.yml"
    log:
        "logs/plot_toy_recovery/{toy}/{sae}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_OPTIONS_SHELL


# The headline numbers as a table in the report (mechflow.steps.render_table: HTML, since the
# report shows a CSV only as a download).
rule tabulate_sae_metrics:
    input:
        SAES.sweep_metrics,
    output:
        report(
            f"{RESULTS}/saes/{{model}}/{{hook}}/sweep_metrics.html",
            caption="../report/saes/sae_metrics_table.rst",
            category="Sparse autoencoders",
            subcategory="{model} {hook}",
        ),
    params:
        title="{model} {hook}: SAE sweep metrics",
    conda:
        "../../environment.yml"
    log:
        "logs/tabulate_sae_metrics/{model}/{hook}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
        " --index sae architecture --pivot metric --values value"
        " --show sae architecture l0 explained_variance fvu ce_clean ce_sae ce_recovered_zero"
        " ce_recovered_mean frac_dead frac_dense --out {output:q} > {log:q} 2>&1"
