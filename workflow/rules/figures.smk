# Figures: computed only from the tidy tables; PNG for the report, SVG beside it.

# Plots take seconds and little memory: on a cluster they run on the submitting host rather
# than as queued SLURM jobs (each would wait in the queue and start Snakemake twice).
localrules:
    plot_head_scores,
    plot_loss_by_position,
    plot_head_ablation,
    plot_composition,
    plot_copying,
    plot_phase_change,


rule plot_head_scores:
    input:
        f"{RESULTS}/induction/{{model}}/head_scores.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/head_scores.png",
            caption="../report/head_scores.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/head_scores.svg",
    params:
        threshold=induction_setting("detection_threshold", 0.4),
    conda:
        "../../environment.yml"
    log:
        "logs/plot_head_scores/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.plot_head_scores --table {input:q} --threshold {params.threshold}"
        " --out {output.png:q} > {log:q} 2>&1"

rule plot_loss_by_position:
    input:
        f"{RESULTS}/induction/{{model}}/loss_by_position.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/loss_by_position.png",
            caption="../report/loss_by_position.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/loss_by_position.svg",
    params:
        d_vocab=get_eval_vocab,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_loss_by_position/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.plot_loss_by_position --table {input:q} --d-vocab {params.d_vocab}"
        " --out {output.png:q} > {log:q} 2>&1"

rule plot_head_ablation:
    input:
        f"{RESULTS}/induction/{{model}}/head_ablation.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/head_ablation.png",
            caption="../report/head_ablation.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/head_ablation.svg",
    conda:
        "../../environment.yml"
    log:
        "logs/plot_head_ablation/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.plot_head_ablation --table {input:q}"
        " --out {output.png:q} > {log:q} 2>&1"

rule plot_composition:
    input:
        f"{RESULTS}/induction/{{model}}/composition.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/composition.png",
            caption="../report/composition.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/composition.svg",
    conda:
        "../../environment.yml"
    log:
        "logs/plot_composition/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.plot_composition --table {input:q}"
        " --out {output.png:q} > {log:q} 2>&1"

rule plot_copying:
    input:
        f"{RESULTS}/induction/{{model}}/copying.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/copying.png",
            caption="../report/copying.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/copying.svg",
    conda:
        "../../environment.yml"
    log:
        "logs/plot_copying/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.plot_copying --table {input:q}"
        " --out {output.png:q} > {log:q} 2>&1"

rule plot_phase_change:
    input:
        f"{RESULTS}/induction/{{model}}/phase_change.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/phase_change.png",
            caption="../report/phase_change.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/phase_change.svg",
    params:
        threshold=induction_setting("detection_threshold", 0.4),
    conda:
        "../../environment.yml"
    log:
        "logs/plot_phase_change/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.plot_phase_change --table {input:q} --threshold {params.threshold}"
        " --out {output.png:q} > {log:q} 2>&1"
