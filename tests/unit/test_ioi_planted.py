"""The planted IOI circuit does what it is built to do, and the per-head measurements read it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from mechflow.experiments.ioi.measures import (
    CLASSES,
    attention_signatures,
    head_logit_differences,
    logit_difference,
)
from mechflow.experiments.ioi.planted import planted_ioi_model
from mechflow.experiments.ioi.prompts import Vocabulary, corrupt_abc, make_prompts


@pytest.fixture(scope="module")
def planted():
    vocab = Vocabulary.build()
    prompts = make_prompts(60, seed=0, vocabulary=vocab, seq_len=32)
    return planted_ioi_model(vocab, n_ctx=32, scale=10.0), prompts, vocab


def test_it_solves_ioi_by_the_planted_logit_difference(planted):
    model, prompts, _ = planted
    with torch.no_grad():
        logits = model(torch.as_tensor(prompts.tokens))
    rows = np.arange(len(prompts))
    at_end = logits[rows, prompts.positions["END"]]
    assert (at_end.argmax(-1).numpy() == prompts.io).all()
    metric = logit_difference(prompts, reduce="none")
    assert_close(metric(logits), torch.full((len(prompts),), 10.0), atol=1e-2, rtol=0)


def test_the_measurements_read_the_planted_heads(planted):
    model, prompts, _ = planted
    dla = head_logit_differences(model, prompts)
    # the suppressor writes the whole difference; the name mover copies IO and S alike
    assert_close(dla, torch.tensor([[0.0, 0.0], [0.0, 10.0]]), atol=1e-2, rtol=0)
    att = attention_signatures(model, prompts).set_index(["layer", "head", "query", "key"])
    a = att["attention"]
    assert a[0, 0, "S2", "S1"] > 0.99  # duplicate-token head
    assert a[1, 0, "END", "IO"] == pytest.approx(0.5, abs=0.01)  # name mover: both unflagged
    assert a[1, 0, "END", "S1"] == pytest.approx(0.5, abs=0.01)
    assert a[1, 0, "END", "S2"] < 0.01
    assert a[1, 1, "END", "S2"] > 0.99  # the S suppressor


def test_the_abc_corruption_removes_its_answer(planted):
    model, prompts, vocab = planted
    abc = corrupt_abc(prompts, seed=1, vocabulary=vocab)
    with torch.no_grad():
        logits = model(torch.as_tensor(abc))
    metric = logit_difference(prompts)
    assert abs(float(metric(logits))) < 0.1  # IO and S are absent: no preference


def test_patching_recovers_the_planted_circuit(planted):
    """Noising each head's path to the logits moves only the suppressor; its keys are where the
    duplicate-token head acts; denoising the suppressor alone restores the whole answer."""
    from mechflow.patching import Receiver, activation_patching, normalised, path_patching

    model, prompts, vocab = planted
    clean = torch.as_tensor(prompts.tokens)
    corrupted = torch.as_tensor(corrupt_abc(prompts, seed=1, vocabulary=vocab))
    metric = logit_difference(prompts)
    with torch.no_grad():
        clean_score, corrupted_score = float(metric(model(clean))), float(metric(model(corrupted)))

    def scaled(x):
        return normalised(x, clean_score, corrupted_score)

    to_logits = scaled(path_patching(model, clean, corrupted, metric))
    assert_close(to_logits, torch.tensor([[1.0, 1.0], [1.0, 0.0]]), atol=0.02, rtol=0)
    to_keys = scaled(
        path_patching(model, clean, corrupted, metric, receivers=[Receiver(1, 1, "k")])
    )
    assert to_keys[0, 0] < 0.1 and (to_keys[0, 1] - 1).abs() < 0.02
    denoised = scaled(activation_patching(model, clean, corrupted, "z", metric))
    assert_close(denoised, torch.tensor([[0.0, 0.0], [0.0, 1.0]]), atol=0.02, rtol=0)


def test_the_classes_of_a_planted_gpt2_shaped_circuit_are_recovered_exactly():
    """Duplicate-token 0.0 -> S-inhibition 1.0 -> name mover 2.0, each needed for the answer;
    the other heads do nothing and are in no class."""
    from mechflow.experiments.ioi.measures import classify_heads
    from mechflow.experiments.ioi.planted import planted_paper_ioi_model

    vocab = Vocabulary.build()
    prompts = make_prompts(40, seed=3, vocabulary=vocab, seq_len=32)
    model = planted_paper_ioi_model(vocab, n_ctx=32)
    abc = corrupt_abc(prompts, seed=4, vocabulary=vocab)
    with torch.no_grad():
        logits = model(torch.as_tensor(prompts.tokens))
    rows = np.arange(len(prompts))
    assert (logits[rows, prompts.positions["END"]].argmax(-1).numpy() == prompts.io).all()
    found = classify_heads(model, prompts, abc)
    assert {name: heads for name, heads in found.classes.items() if heads} == {
        "name mover": [(2, 0)],
        "S-inhibition": [(1, 0)],
        "duplicate-token": [(0, 0)],
    }
    assert list(found.classes) == list(CLASSES)  # every class listed, the empty ones too
    table = found.heads.set_index(["layer", "head"])
    assert table.loc[(2, 0), "class"] == "name mover" and table.loc[(0, 1), "class"] == ""
    assert table.loc[(2, 0), "att_end_io"] > 0.99


def test_a_circuit_that_copies_both_names_and_suppresses_s(planted):
    """The two-layer circuit: the copier moves IO and S alike (a name mover whose share of the
    difference is zero), the suppressor attends S2 and writes -S, and the duplicate-token head
    is found through the suppressor's keys."""
    from mechflow.experiments.ioi.measures import classify_heads

    model, prompts, vocab = planted
    found = classify_heads(model, prompts, corrupt_abc(prompts, seed=1, vocabulary=vocab))
    assert {name: heads for name, heads in found.classes.items() if heads} == {
        "name mover": [(1, 0)],
        "S suppression": [(1, 1)],
        "duplicate-token": [(0, 0)],
    }
    table = found.heads.set_index(["layer", "head"])
    assert abs(table.loc[(1, 0), "dla_diff"]) < 0.01 < table.loc[(1, 0), "dla_io"]


def test_faithfulness_of_the_planted_circuit_against_random_circuits():
    """Keeping the three planted heads keeps the whole answer; mean-ablating every head (the ABC
    means of each template and prefix) removes it; random 3-head circuits fall in between."""
    from mechflow.experiments.ioi.planted import planted_paper_ioi_model
    from mechflow.patching.circuits import circuit_score, faithfulness, group_means

    vocab = Vocabulary.build()
    prompts = make_prompts(80, seed=5, vocabulary=vocab, seq_len=32, template_ids=[0, 1])
    model = planted_paper_ioi_model(vocab, n_ctx=32)
    abc = corrupt_abc(prompts, seed=6, vocabulary=vocab)
    groups = prompts.template * 100 + prompts.prefix  # prompts whose positions line up
    metric = logit_difference(prompts)
    result = faithfulness(model, prompts.tokens, abc, groups, [(0, 0), (1, 0), (2, 0)], metric)
    assert result["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert result["random_faithfulness"] < 0.5
    means = group_means(model, abc, groups)
    assert abs(circuit_score(model, prompts.tokens, groups, means, [], metric)) < 0.5
    everything = [(layer, head) for layer in range(3) for head in range(2)]
    full = circuit_score(model, prompts.tokens, groups, means, everything, metric)
    assert full == pytest.approx(result["model"], abs=1e-5)


def test_a_planted_backup_name_mover_is_found_by_knocking_out_the_name_mover():
    """3.0 writes nothing while the name mover 2.0 works and takes over when 2.0 is
    mean-ablated: it is found as a backup, and the knock-out keeps most of the answer."""
    from mechflow.experiments.ioi.measures import alignment_groups, classify_heads
    from mechflow.experiments.ioi.planted import planted_paper_ioi_model
    from mechflow.patching.circuits import group_means, knockout_score

    vocab = Vocabulary.build()
    prompts = make_prompts(60, seed=3, vocabulary=vocab, seq_len=32)
    abc = corrupt_abc(prompts, seed=4, vocabulary=vocab)
    model = planted_paper_ioi_model(vocab, n_ctx=32, backup=True)
    found = classify_heads(model, prompts, abc)
    assert {name: heads for name, heads in found.classes.items() if heads} == {
        "name mover": [(2, 0)],
        "backup name mover": [(3, 0)],
        "S-inhibition": [(1, 0)],
        "duplicate-token": [(0, 0)],
    }
    table = found.heads.set_index(["layer", "head"])
    assert abs(table.loc[(3, 0), "dla_io"]) < 0.1 < 5 < table.loc[(3, 0), "dla_io_movers_ablated"]
    groups, metric = alignment_groups(prompts), logit_difference(prompts)
    means = group_means(model, torch.as_tensor(abc), groups)
    clean = knockout_score(model, prompts.tokens, groups, means, [], metric)
    knocked = knockout_score(model, prompts.tokens, groups, means, [(2, 0)], metric)
    both = knockout_score(model, prompts.tokens, groups, means, [(2, 0), (3, 0)], metric)
    assert knocked > 0.5 * clean and both < 0.2 * clean  # the means keep a little
