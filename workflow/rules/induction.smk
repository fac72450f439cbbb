# Induction heads and composition (Elhage et al. 2021; Olsson et al. 2022): one table per analysis
# under results/induction/{model}/.
#
# The quick analyses of one model (scores, loss by position) form the group "induction_{model}":
# with `group-components: induction_{model}=4` (slurm profile) they run as one cluster job per model
# instead of four tiny ones. ablate_heads and track_phase_change stay separate jobs: they are
# the long, GPU-using analyses. Locally, groups change nothing.


rule score_heads:
    input:
        store=get_eval_store,
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        tokens=get_eval_tokens,
    output:
        f"{RESULTS}/induction/{{model}}/head_scores.csv",
    params:
        model_dir=subpath(input.weights, parent=True),
        half_len=get_half_len,
        batch_size=induction_setting("batch_size", 64),
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
        tokens=get_eval_tokens,
    output:
        f"{RESULTS}/induction/{{model}}/loss_by_position.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        half_len=get_half_len,
        batch_size=induction_setting("batch_size", 64),
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
        tokens=get_eval_tokens,
    output:
        f"{RESULTS}/induction/{{model}}/head_ablation.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        half_len=get_half_len,
        batch_size=induction_setting("batch_size", 64),
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
        samples=induction_setting("composition_baseline_samples", 200),
        seed=induction_setting("seed", 0),
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
        eval_tokens=get_eval_tokens,
        icl_tokens=get_icl_tokens,
    output:
        f"{RESULTS}/induction/{{model}}/phase_change.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        half_len=get_half_len,
        batch_size=induction_setting("batch_size", 64),
        icl_early=induction_setting("icl_early", 5),
        icl_late=induction_setting("icl_late", 60),
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
        " --batch-size {params.batch_size} --threads {threads} --device {params.device}"
        " --out {output:q} > {log:q} 2>&1"
