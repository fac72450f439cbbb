# OthelloGPT (Li et al. 2023; Nanda 2023): a model of random legal games, its board read by
# linear probes (mine/theirs against black/white, with shuffled-label and random-init
# controls), edited along a probe direction, and its move attributed. Tables under
# results/othello/{model}/ (the control's under results/othello/{control}/), figures under
# results/figures/othello/{model}/, the games' labels in results/othello/labels/{dataset}.zarr.

OTH = EXPERIMENT["othello"]  # mechflow.experiments.othello.workflow
OTH_MODEL = f"{RESULTS}/models/{{model}}/model.safetensors"
OTH_DIR = f"{RESULTS}/othello/{{model}}"
from mechflow.experiments.othello.workflow import FIGURE_TABLES as OTH_FIGURE_TABLES
from mechflow.experiments.othello.workflow import TABLES as OTH_TABLES


localrules:
    summarize_othello_probes,
    check_othello,
    tabulate_othello_legal_moves,
    tabulate_othello_probe_summary,
    tabulate_othello_interventions,
    tabulate_othello_checks,


# The rules replayed over a dataset's games: per position, the board in both bases, the legal
# next moves and the flipped stones, aligned with the tokens (zarr v3, seq x pos x square).
rule label_othello_games:
    input:
        f"{RESULTS}/datasets/{{dataset}}.npy",
    output:
        directory(f"{RESULTS}/othello/labels/{{dataset}}.zarr"),
    wildcard_constraints:
        dataset=alternation(W.datasets_of_kind("othello")),
    params:
        board_size=OTH.board_size,
    conda:
        "../../environment.yml"
    log:
        "logs/label_othello_games/{dataset}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.label_othello_games --tokens {input:q}"
        " --board-size {params.board_size} --dataset {wildcards.dataset}"
        " --out {output:q} > {log:q} 2>&1"


# Legal play of a model and of its control on the held-out games.
rule evaluate_othello:
    input:
        weights=OTH_MODEL,
        tokens=OTH.eval_tokens,
        labels=OTH.eval_labels,
    output:
        summary=f"{OTH_DIR}/legal_moves.csv",
        by_position=f"{OTH_DIR}/legal_by_position.csv",
    wildcard_constraints:
        model=alternation(OTH.models()),
    params:
        model_dir=subpath(input.weights, parent=True),
        batch_size=OTH.setting("batch_size"),
    conda:
        "../../environment.yml"
    log:
        "logs/evaluate_othello/{model}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.evaluate_othello --model-dir {params.model_dir:q}"
        " --tokens {input.tokens:q} --labels {input.labels:q} --batch-size {params.batch_size}"
        " --threads {threads} --out {output.summary:q} --by-position-out {output.by_position:q}"
        " > {log:q} 2>&1"


rule probe_othello:
    input:
        store=OTH.eval_store,
        labels=OTH.eval_labels,
    output:
        probes=directory(f"{OTH_DIR}/probes"),
        accuracy=f"{OTH_DIR}/probe_accuracy.csv",
        boards=f"{OTH_DIR}/probe_boards.csv",
    wildcard_constraints:
        model=alternation(OTH.models()),
    params:
        hooks=OTH.hook_flags,
        probes=OTH.probe_json,
        first=OTH.setting("first_move"),
        last=OTH.setting("last_from_end"),
        shuffled=OTH.shuffled_flag,
    conda:
        "../../environment.yml"
    log:
        "logs/probe_othello/{model}.log",
    benchmark:
        "benchmarks/probe_othello/{model}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m mechflow.steps.probe_othello --store {input.store:q} --labels {input.labels:q}"
        " {params.hooks} --probe-config {params.probes:q} --first-move {params.first}"
        " --last-from-end {params.last} {params.shuffled} --example-positions 3"
        " --threads {threads} --out-dir {output.probes:q} --accuracy-out {output.accuracy:q}"
        " --boards-out {output.boards:q} > {log:q} 2>&1"


rule intervene_othello:
    input:
        weights=OTH_MODEL,
        tokens=OTH.eval_tokens,
        labels=OTH.eval_labels,
        probes=f"{OTH_DIR}/probes",
    output:
        f"{OTH_DIR}/interventions.csv",
    wildcard_constraints:
        model=alternation(OTH.units()),
    params:
        model_dir=subpath(input.weights, parent=True),
        layer=OTH.intervention_layer,
        scales=OTH.scales,
        edits=OTH.option("intervention", "edits"),
        seed=OTH.option("intervention", "seed"),
        first=OTH.setting("first_move"),
        last=OTH.setting("last_from_end"),
        batch_size=OTH.setting("batch_size"),
    conda:
        "../../environment.yml"
    log:
        "logs/intervene_othello/{model}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.intervene_othello --model-dir {params.model_dir:q}"
        " --tokens {input.tokens:q} --labels {input.labels:q} --probes {input.probes:q}/relative"
        " --layer {params.layer} --scales {params.scales} --edits {params.edits}"
        " --seed {params.seed} --first-move {params.first} --last-from-end {params.last}"
        " --batch-size {params.batch_size} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule attribute_othello:
    input:
        weights=OTH_MODEL,
        tokens=OTH.eval_tokens,
        labels=OTH.eval_labels,
        probes=f"{OTH_DIR}/probes",
    output:
        attribution=f"{OTH_DIR}/move_attribution.csv",
        patching=f"{OTH_DIR}/move_patching.csv",
        neurons=f"{OTH_DIR}/neurons.csv",
        activations=f"{OTH_DIR}/neuron_activations.csv",
    wildcard_constraints:
        model=alternation(OTH.units()),
    params:
        model_dir=subpath(input.weights, parent=True),
        move=OTH.patch_move,
        games=OTH.option("attribution", "games"),
        later=OTH.option("attribution", "later"),
        neuron_layer=OTH.neuron_layer,
        neurons=OTH.option("attribution", "neurons"),
        seed=OTH.option("attribution", "seed"),
        first=OTH.setting("first_move"),
        last=OTH.setting("last_from_end"),
        batch_size=OTH.setting("batch_size"),
    conda:
        "../../environment.yml"
    log:
        "logs/attribute_othello/{model}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.attribute_othello --model-dir {params.model_dir:q}"
        " --tokens {input.tokens:q} --labels {input.labels:q} --probes {input.probes:q}/relative"
        " --move {params.move} --games {params.games} --later {params.later}"
        " --neuron-layer {params.neuron_layer}"
        " --neurons {params.neurons} --seed {params.seed} --first-move {params.first}"
        " --last-from-end {params.last} --batch-size {params.batch_size} --threads {threads}"
        " --attribution-out {output.attribution:q} --patching-out {output.patching:q}"
        " --neurons-out {output.neurons:q} --activations-out {output.activations:q}"
        " > {log:q} 2>&1"


# The model's probes beside its control's: what the probe figures and the checks read.
rule summarize_othello_probes:
    input:
        accuracy=f"{OTH_DIR}/probe_accuracy.csv",
        control_accuracy=OTH.control_file("probe_accuracy"),
    output:
        f"{OTH_DIR}/probe_summary.csv",
    wildcard_constraints:
        model=alternation(OTH.units()),
    conda:
        "../../environment.yml"
    log:
        "logs/summarize_othello_probes/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.summarize_othello_probes --accuracy {input.accuracy:q}"
        " --control-accuracy {input.control_accuracy:q} --out {output:q} > {log:q} 2>&1"


# The paper's claims as checks, each against a control.
rule check_othello:
    input:
        legal=f"{OTH_DIR}/legal_moves.csv",
        summary=f"{OTH_DIR}/probe_summary.csv",
        interventions=f"{OTH_DIR}/interventions.csv",
    output:
        f"{OTH_DIR}/checks.csv",
    wildcard_constraints:
        model=alternation(OTH.units()),
    params:
        thresholds=OTH.thresholds_json,
        enforce=OTH.enforce_flags,
    conda:
        "../../environment.yml"
    log:
        "logs/check_othello/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.check_othello --legal {input.legal:q}"
        " --summary {input.summary:q} --interventions {input.interventions:q}"
        " --thresholds {params.thresholds:q} {params.enforce} --out {output:q} > {log:q} 2>&1"


# Figures, drawn from the tables only (mechflow.experiments.othello.figures).
for _figure, _tables in OTH_FIGURE_TABLES.items():

    rule:
        name:
            f"plot_othello_{_figure}"
        input:
            **OTH.figure_inputs(_tables),
        output:
            png=report(
                f"{RESULTS}/figures/othello/{{model}}/{_figure}.png",
                caption=f"../report/othello/{_figure}.rst",
                category="OthelloGPT",
                subcategory="{model}",
            ),
            svg=f"{RESULTS}/figures/othello/{{model}}/{_figure}.svg",
        params:
            figure=f"othello.{_figure}",
            tables=table_flags,
            options=option_flags(model="{model}"),
        conda:
            "../../environment.yml"
        log:
            f"logs/plot_othello_{_figure}/{{model}}.log",
        localrule: True
        resources:
            mem_mb=1000,
            runtime=5,
        shell:
            PLOT_OPTIONS_SHELL


# The headline tables in the report (mechflow.steps.render_table).
for _table, (_title, _columns) in OTH_TABLES.items():

    rule:
        name:
            f"tabulate_othello_{_table}"
        input:
            f"{OTH_DIR}/{_table}.csv",
        output:
            report(
                f"{OTH_DIR}/{_table}.html",
                caption=f"../report/othello/{_table}_table.rst",
                category="OthelloGPT",
                subcategory="{model}",
            ),
        wildcard_constraints:
            model=alternation(OTH.units()),
        params:
            title=f"{{model}}: {_title}",
            columns=" ".join(_columns),
        conda:
            "../../environment.yml"
        log:
            f"logs/tabulate_othello_{_table}/{{model}}.log",
        resources:
            mem_mb=1000,
            runtime=5,
        shell:
            "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
            " --show {params.columns} --out {output:q} > {log:q} 2>&1"
