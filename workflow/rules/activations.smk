rule cache_activations:
    input:
        weights=f"{RESULTS}/models/{{model}}/model.safetensors",
        config=f"{RESULTS}/models/{{model}}/config.json",
        tokens=f"{RESULTS}/datasets/{{dataset}}.npy",
    output:
        directory(f"{RESULTS}/activations/{{model}}/{{dataset}}.zarr"),
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        hooks=W.cache_hook_flags,
        dtype=W.activations["dtype"],
        compression=W.activations["compression"],
    conda:
        "../../environment.yml"
    log:
        "logs/cache_activations/{model}/{dataset}.log",
    benchmark:
        "benchmarks/cache_activations/{model}/{dataset}.tsv"
    threads: 2
    resources:
        gpu=GPU_HERE,
        mem_mb=4000,
        runtime=60,
        # sequences per forward pass: a machine setting (speed, memory), so it is a resource,
        # not a param: a profile's `set-resources` changes it without rerunning any job
        batch_size=64,
    shell:
        "python -m mechflow.steps.cache_activations --model-dir {params.model_dir:q}"
        " --tokens {input.tokens:q} {params.hooks} --dtype {params.dtype}"
        " --compression {params.compression} --batch-size {resources.batch_size}"
        " --threads {threads} --device {params.device} --out {output:q} > {log:q} 2>&1"
