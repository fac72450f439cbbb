INDUCTION = EXPERIMENT["induction"]  # mechflow.experiments.induction.workflow


# Plots take seconds and little memory: on a cluster they run on the submitting host.
localrules:
    plot_head_scores,
    plot_loss_by_position,
    plot_head_ablation,
    plot_composition,
    plot_copying,
    plot_phase_change,
    tabulate_head_scores,
    tabulate_head_ablation,


# Induction heads and composition (Elhage et al. 2021; Olsson et al. 2022): one table per analysis
# under results/induction/{model}/.
#
# The quick analyses of one model (scores, loss by position) form the group "induction_{model}":
# with `group-components: induction_{model}=4` (slurm profile) they run as one cluster job per model
# instead of four tiny ones. ablate_heads and track_phase_change stay separate jobs: they are
# the long, GPU-using analyses. Locally, groups change nothing.


rule score_heads:
    input:
        store=INDUCTION.eval_store,
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        tokens=INDUCTION.eval_tokens,
    output:
        f"{RESULTS}/induction/{{model}}/head_scores.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        half_len=INDUCTION.half_len,
        batch_size=INDUCTION.setting("batch_size"),
    group:
        "induction_{model}"
    conda:
        "../../environment.yml"
    log:
        "logs/score_heads/{model}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.score_heads --store {input.store:q}"
        " --model-dir {params.model_dir:q} --tokens {input.tokens:q}"
        " --half-len {params.half_len} --batch-size {params.batch_size}"
        " --out {output:q} > {log:q} 2>&1"


rule measure_loss_by_position:
    input:
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        tokens=INDUCTION.eval_tokens,
    output:
        f"{RESULTS}/induction/{{model}}/loss_by_position.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        half_len=INDUCTION.half_len,
        batch_size=INDUCTION.setting("batch_size"),
    group:
        "induction_{model}"
    conda:
        "../../environment.yml"
    log:
        "logs/measure_loss_by_position/{model}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.measure_loss_by_position --model-dir {params.model_dir:q}"
        " --tokens {input.tokens:q} --half-len {params.half_len}"
        " --batch-size {params.batch_size} --threads {threads} --device {params.device}"
        " --out {output:q} > {log:q} 2>&1"


rule ablate_heads:
    input:
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        tokens=INDUCTION.eval_tokens,
    output:
        f"{RESULTS}/induction/{{model}}/head_ablation.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        half_len=INDUCTION.half_len,
        batch_size=INDUCTION.setting("batch_size"),
    conda:
        "../../environment.yml"
    log:
        "logs/ablate_heads/{model}.log",
    benchmark:
        "benchmarks/ablate_heads/{model}.tsv"
    threads: 2
    resources:
        gpu=GPU_HERE,
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m mechflow.steps.ablate_heads --model-dir {params.model_dir:q}"
        " --tokens {input.tokens:q} --half-len {params.half_len}"
        " --batch-size {params.batch_size} --threads {threads} --device {params.device}"
        " --out {output:q} > {log:q} 2>&1"


rule score_composition:
    input:
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
    output:
        f"{RESULTS}/induction/{{model}}/composition.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        samples=INDUCTION.setting("composition_baseline_samples"),
        seed=INDUCTION.setting("seed"),
    group:
        "induction_{model}"
    conda:
        "../../environment.yml"
    log:
        "logs/score_composition/{model}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.score_composition --model-dir {params.model_dir:q}"
        " --baseline-samples {params.samples} --seed {params.seed}"
        " --out {output:q} > {log:q} 2>&1"


rule score_copying:
    input:
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
    output:
        f"{RESULTS}/induction/{{model}}/copying.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
    group:
        "induction_{model}"
    conda:
        "../../environment.yml"
    log:
        "logs/score_copying/{model}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.score_copying --model-dir {params.model_dir:q}"
        " --out {output:q} > {log:q} 2>&1"


rule track_phase_change:
    input:
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        checkpoints=f"{RESULTS}/models/{{model}}/checkpoints",
        eval_tokens=INDUCTION.eval_tokens,
        icl_tokens=INDUCTION.icl_tokens,
    output:
        f"{RESULTS}/induction/{{model}}/phase_change.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        half_len=INDUCTION.half_len,
        batch_size=INDUCTION.setting("batch_size"),
        icl_early=INDUCTION.icl_early,
        icl_late=INDUCTION.icl_late,
        icl_sequences=INDUCTION.setting("icl_sequences"),
    conda:
        "../../environment.yml"
    log:
        "logs/track_phase_change/{model}.log",
    benchmark:
        "benchmarks/track_phase_change/{model}.tsv"
    threads: 2
    resources:
        gpu=GPU_HERE,
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m mechflow.steps.track_phase_change --model-dir {params.model_dir:q}"
        " --checkpoints-dir {input.checkpoints:q} --eval-tokens {input.eval_tokens:q}"
        " --icl-tokens {input.icl_tokens:q} --half-len {params.half_len}"
        " --icl-early {params.icl_early} --icl-late {params.icl_late}"
        " --icl-sequences {params.icl_sequences}"
        " --batch-size {params.batch_size} --threads {threads} --device {params.device}"
        " --out {output:q} > {log:q} 2>&1"


rule plot_head_scores:
    input:
        table=f"{RESULTS}/induction/{{model}}/head_scores.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/head_scores.png",
            caption="../report/induction/head_scores.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/head_scores.svg",
    params:
        figure="induction.head_scores",
        tables=table_flags,
        options=option_flags(threshold=INDUCTION.setting("detection_threshold")),
    conda:
        "../../environment.yml"
    log:
        "logs/plot_head_scores/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_OPTIONS_SHELL


rule plot_loss_by_position:
    input:
        table=f"{RESULTS}/induction/{{model}}/loss_by_position.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/loss_by_position.png",
            caption="../report/induction/loss_by_position.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/loss_by_position.svg",
    params:
        figure="induction.loss_by_position",
        tables=table_flags,
        options=INDUCTION.loss_by_position_options,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_loss_by_position/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_OPTIONS_SHELL


rule plot_head_ablation:
    input:
        table=f"{RESULTS}/induction/{{model}}/head_ablation.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/head_ablation.png",
            caption="../report/induction/head_ablation.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/head_ablation.svg",
    params:
        figure="induction.head_ablation",
        tables=table_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_head_ablation/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_SHELL


rule plot_composition:
    input:
        table=f"{RESULTS}/induction/{{model}}/composition.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/composition.png",
            caption="../report/induction/composition.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/composition.svg",
    params:
        figure="induction.composition",
        tables=table_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_composition/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_SHELL


rule plot_copying:
    input:
        table=f"{RESULTS}/induction/{{model}}/copying.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/copying.png",
            caption="../report/induction/copying.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/copying.svg",
    params:
        figure="induction.copying",
        tables=table_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/plot_copying/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_SHELL


rule plot_phase_change:
    input:
        table=f"{RESULTS}/induction/{{model}}/phase_change.csv",
    output:
        png=report(
            f"{RESULTS}/figures/induction/{{model}}/phase_change.png",
            caption="../report/induction/phase_change.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/induction/{{model}}/phase_change.svg",
    params:
        figure="induction.phase_change",
        tables=table_flags,
        options=option_flags(threshold=INDUCTION.setting("detection_threshold")),
    conda:
        "../../environment.yml"
    log:
        "logs/plot_phase_change/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_OPTIONS_SHELL


# The headline numbers as tables in the report (mechflow.steps.render_table: HTML, since the
# report shows a CSV only as a download).
rule tabulate_head_scores:
    input:
        f"{RESULTS}/induction/{{model}}/head_scores.csv",
    output:
        report(
            f"{RESULTS}/induction/{{model}}/head_scores.html",
            caption="../report/induction/head_scores_table.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
    params:
        title="{model}: attention-pattern head scores",
        threshold=INDUCTION.setting("detection_threshold"),
    conda:
        "../../environment.yml"
    log:
        "logs/tabulate_head_scores/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
        " --index layer head --pivot score --values value --mark-above {params.threshold}"
        " --out {output:q} > {log:q} 2>&1"


rule tabulate_head_ablation:
    input:
        f"{RESULTS}/induction/{{model}}/head_ablation.csv",
    output:
        report(
            f"{RESULTS}/induction/{{model}}/head_ablation.html",
            caption="../report/induction/head_ablation_table.rst",
            category="Induction heads",
            subcategory="{model}",
        ),
    params:
        title="{model}: loss increase (nats) from ablating one head",
    conda:
        "../../environment.yml"
    log:
        "logs/tabulate_head_ablation/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
        " --index layer head --pivot ablation --values delta"
        " --out {output:q} > {log:q} 2>&1"
