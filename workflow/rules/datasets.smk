rule make_dataset:
    output:
        f"{RESULTS}/datasets/{{dataset}}.npy",
    wildcard_constraints:
        dataset=alternation(
            W.datasets_of_kind("repeated_spans", "repeated_random", "ioi", "othello")
        ),
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


# A dataset of kind `subset`: sequences drawn from another dataset's split (its tokenizer is
# that dataset's).
rule select_sequences:
    input:
        W.subset_source,
    output:
        f"{RESULTS}/datasets/{{dataset}}.npy",
    wildcard_constraints:
        dataset=alternation(W.datasets_of_kind("subset")),
    params:
        n_sequences=W.subset_n_sequences,
        seed=W.subset_seed,
    conda:
        "../../environment.yml"
    log:
        "logs/select_sequences/{dataset}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.select_sequences --source {input:q}"
        " --n-sequences {params.n_sequences} --seed {params.seed} --out {output:q} > {log:q} 2>&1"


# A dataset of kind `text`: the train split under the name every dataset has (what models train
# on and activations are cached from), its validation split, tokenizer and provenance beside it.
# `dataset` matches slugs only, so `<name>.validation` is never a dataset of make_dataset's.
# With `tokenizer: <pretrained model>`, that model's own tokenizer (its path, or its name in the
# Hugging Face cache) is read instead of training one.
rule make_text_dataset:
    input:
        W.text_corpus_files,
    output:
        train=f"{RESULTS}/datasets/{{dataset}}.npy",
        validation=f"{RESULTS}/datasets/{{dataset}}.validation.npy",
        tokenizer=f"{RESULTS}/datasets/{{dataset}}.tokenizer.json",
        provenance=f"{RESULTS}/datasets/{{dataset}}.json",
    wildcard_constraints:
        dataset=alternation(W.datasets_of_kind("text")),
    params:
        spec=W.dataset_spec,
        tokenizer=W.text_tokenizer_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/make_text_dataset/{dataset}.log",
    benchmark:
        "benchmarks/make_text_dataset/{dataset}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.make_text_dataset --spec {params.spec:q} {params.tokenizer}"
        " --threads {threads} --out {output.train:q} --validation-out {output.validation:q}"
        " --tokenizer-out {output.tokenizer:q} --provenance-out {output.provenance:q}"
        " > {log:q} 2>&1"
