rule train_model:
    input:
        tokens=W.training_dataset,
        validation=W.validation_dataset,
    output:
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        config=f"{RESULTS}/models/{{model}}/config.json",
        loss_log=f"{RESULTS}/models/{{model}}/train_log.csv",
        checkpoints=directory(f"{RESULTS}/models/{{model}}/checkpoints"),
    wildcard_constraints:
        model=alternation(W.models_from("trained")),
    params:
        device=get_device,
        architecture=W.architecture_json,
        training=W.training_json,
        validation=W.validation_flag,
        out_dir=subpath(output.weights, parent=True),
    conda:
        "../../environment.yml"
    log:
        "logs/train_model/{model}.log",
    benchmark:
        "benchmarks/train_model/{model}.tsv"
    threads: 2
    resources:
        gpu=GPU_HERE,
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m mechflow.steps.train_model --architecture {params.architecture:q}"
        " --training {params.training:q} --tokens {input.tokens:q} {params.validation}"
        " --threads {threads} --device {params.device} --out-dir {params.out_dir:q} > {log:q} 2>&1"


# A model at its initialisation (`source: initialised`): the controls of probes and patching.
rule initialise_model:
    output:
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        config=f"{RESULTS}/models/{{model}}/config.json",
    wildcard_constraints:
        model=alternation(W.models_from("initialised")),
    params:
        architecture=W.architecture_json,
        seed=W.initial_seed,
        out_dir=subpath(output.weights, parent=True),
    conda:
        "../../environment.yml"
    log:
        "logs/initialise_model/{model}.log",
    resources:
        mem_mb=2000,
        runtime=5,
    shell:
        "python -m mechflow.steps.initialise_model --architecture {params.architecture:q}"
        " --seed {params.seed} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule import_pretrained:
    output:
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        config=f"{RESULTS}/models/{{model}}/config.json",
    wildcard_constraints:
        model=alternation(W.models_from("pretrained")),
    params:
        name=W.pretrained_name,
        path_flag=W.pretrained_path_flag,
        out_dir=subpath(output.weights, parent=True),
    conda:
        "../../environment.yml"
    log:
        "logs/import_pretrained/{model}.log",
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m mechflow.steps.import_pretrained --name {params.name:q} {params.path_flag}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
