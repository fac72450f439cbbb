rule make_dataset:
    output:
        f"{RESULTS}/datasets/{{dataset}}.npy",
    params:
        kind=W.dataset_kind,
        spec=W.dataset_spec,
    conda:
        "../../environment.yml"
    log:
        "logs/make_dataset/{dataset}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.make_dataset --kind {params.kind} --spec {params.spec:q}"
        " --out {output:q} > {log:q} 2>&1"
