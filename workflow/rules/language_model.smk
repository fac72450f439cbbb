# A language model of text (GPT-2 from scratch, or GPT-2 small when its weights are here): its
# validation loss against baselines, samples, the logit lens and direct logit attribution, all
# on the held-out split of its text dataset. Tables under results/language_model/{model}/.

LM = EXPERIMENT["language_model"]  # mechflow.experiments.language_model.workflow
LM_MODEL = f"{RESULTS}/models/{{model}}/model.safetensors"


localrules:
    plot_loss_curve,
    plot_logit_lens,
    plot_logit_attribution,
    tabulate_losses,
    tabulate_samples,
    tabulate_logit_lens,


rule compare_baselines:
    input:
        weights=LM_MODEL,
        tokens=LM.train_tokens,
        validation=LM.validation_tokens,
        tokenizer=LM.tokenizer,
    output:
        f"{RESULTS}/language_model/{{model}}/losses.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        sequences=LM.setting("loss_sequences"),
        batch_size=LM.setting("batch_size"),
        alpha=LM.setting("unigram_alpha"),
        lam=LM.setting("bigram_lambda"),
    conda:
        "../../environment.yml"
    log:
        "logs/compare_baselines/{model}.log",
    threads: 2
    resources:
        gpu=GPU_HERE,
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m mechflow.steps.compare_baselines --model-dir {params.model_dir:q}"
        " --tokens {input.tokens:q} --validation-tokens {input.validation:q}"
        " --tokenizer {input.tokenizer:q} --sequences {params.sequences}"
        " --batch-size {params.batch_size} --unigram-alpha {params.alpha}"
        " --bigram-lambda {params.lam} --threads {threads} --device {params.device}"
        " --out {output:q} > {log:q} 2>&1"


rule sample_text:
    input:
        weights=LM_MODEL,
        tokenizer=LM.tokenizer,
    output:
        f"{RESULTS}/language_model/{{model}}/samples.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        sampling=LM.sampling_json,
    conda:
        "../../environment.yml"
    log:
        "logs/sample_text/{model}.log",
    threads: 1
    resources:
        gpu=GPU_HERE,
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m mechflow.steps.sample_text --model-dir {params.model_dir:q}"
        " --tokenizer {input.tokenizer:q} --sampling {params.sampling:q}"
        " --threads {threads} --device {params.device} --out {output:q} > {log:q} 2>&1"


rule plot_loss_curve:
    input:
        log=f"{RESULTS}/models/{{model}}/train_log.csv",
        losses=f"{RESULTS}/language_model/{{model}}/losses.csv",
    output:
        png=report(
            f"{RESULTS}/figures/language_model/{{model}}/loss_curve.png",
            caption="../report/language_model/loss_curve.rst",
            category="Language model",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/language_model/{{model}}/loss_curve.svg",
    params:
        figure="language_model.loss_curve",
        tables=table_flags,
        options=option_flags(model="{model}"),
    conda:
        "../../environment.yml"
    log:
        "logs/plot_loss_curve/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_OPTIONS_SHELL


# The headline numbers and the samples as tables in the report (mechflow.steps.render_table).
rule tabulate_losses:
    input:
        f"{RESULTS}/language_model/{{model}}/losses.csv",
    output:
        report(
            f"{RESULTS}/language_model/{{model}}/losses.html",
            caption="../report/language_model/losses_table.rst",
            category="Language model",
            subcategory="{model}",
        ),
    params:
        title="{model}: validation loss against the baselines (nats/token)",
    conda:
        "../../environment.yml"
    log:
        "logs/tabulate_losses/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
        " --show name kind loss margin smoothing tokens --out {output:q} > {log:q} 2>&1"


rule tabulate_samples:
    input:
        f"{RESULTS}/language_model/{{model}}/samples.csv",
    output:
        report(
            f"{RESULTS}/language_model/{{model}}/samples.html",
            caption="../report/language_model/samples_table.rst",
            category="Language model",
            subcategory="{model}",
        ),
    params:
        title="{model}: samples",
    conda:
        "../../environment.yml"
    log:
        "logs/tabulate_samples/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
        " --show prompt strategy settings completion logprob --out {output:q} > {log:q} 2>&1"


rule apply_logit_lens:
    input:
        weights=LM_MODEL,
        tokens=LM.validation_tokens,
    output:
        f"{RESULTS}/language_model/{{model}}/logit_lens.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        sequences=LM.setting("eval_sequences"),
        batch_size=LM.setting("batch_size"),
    conda:
        "../../environment.yml"
    log:
        "logs/apply_logit_lens/{model}.log",
    threads: 1
    resources:
        gpu=GPU_HERE,
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m mechflow.steps.apply_logit_lens --model-dir {params.model_dir:q}"
        " --tokens {input.tokens:q} --sequences {params.sequences}"
        " --batch-size {params.batch_size} --threads {threads} --device {params.device}"
        " --out {output:q} > {log:q} 2>&1"


rule attribute_logits:
    input:
        weights=LM_MODEL,
        tokens=LM.validation_tokens,
    output:
        f"{RESULTS}/language_model/{{model}}/logit_attribution.csv",
    params:
        device=get_device,
        model_dir=subpath(input.weights, parent=True),
        sequences=LM.setting("eval_sequences"),
        batch_size=LM.setting("batch_size"),
    conda:
        "../../environment.yml"
    log:
        "logs/attribute_logits/{model}.log",
    threads: 1
    resources:
        gpu=GPU_HERE,
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m mechflow.steps.attribute_logits --model-dir {params.model_dir:q}"
        " --tokens {input.tokens:q} --sequences {params.sequences}"
        " --batch-size {params.batch_size} --threads {threads} --device {params.device}"
        " --out {output:q} > {log:q} 2>&1"


rule plot_logit_lens:
    input:
        table=f"{RESULTS}/language_model/{{model}}/logit_lens.csv",
    output:
        png=report(
            f"{RESULTS}/figures/language_model/{{model}}/logit_lens.png",
            caption="../report/language_model/logit_lens.rst",
            category="Language model",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/language_model/{{model}}/logit_lens.svg",
    params:
        figure="language_model.logit_lens",
        tables=table_flags,
        options=option_flags(model="{model}"),
    conda:
        "../../environment.yml"
    log:
        "logs/plot_logit_lens/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_OPTIONS_SHELL


rule plot_logit_attribution:
    input:
        table=f"{RESULTS}/language_model/{{model}}/logit_attribution.csv",
    output:
        png=report(
            f"{RESULTS}/figures/language_model/{{model}}/logit_attribution.png",
            caption="../report/language_model/logit_attribution.rst",
            category="Language model",
            subcategory="{model}",
        ),
        svg=f"{RESULTS}/figures/language_model/{{model}}/logit_attribution.svg",
    params:
        figure="language_model.logit_attribution",
        tables=table_flags,
        options=option_flags(model="{model}"),
    conda:
        "../../environment.yml"
    log:
        "logs/plot_logit_attribution/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        PLOT_OPTIONS_SHELL


rule tabulate_logit_lens:
    input:
        f"{RESULTS}/language_model/{{model}}/logit_lens.csv",
    output:
        report(
            f"{RESULTS}/language_model/{{model}}/logit_lens.html",
            caption="../report/language_model/logit_lens_table.rst",
            category="Language model",
            subcategory="{model}",
        ),
    params:
        title="{model}: logit lens per layer",
    conda:
        "../../environment.yml"
    log:
        "logs/tabulate_logit_lens/{model}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m mechflow.steps.render_table --table {input:q} --title {params.title:q}"
        " --show layer hook loss top1_accuracy kl_to_final top1_agreement"
        " --out {output:q} > {log:q} 2>&1"
