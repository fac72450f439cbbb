"""Generation: sampling filters, seeds, beam search, and cached == uncached on every model."""

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mechflow.models.gpt import GPT, GPTConfig, to_hooked
from mechflow.models.sampling import (
    beam_search,
    filter_top_k,
    filter_top_p,
    generate,
    sample_next,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32, "n_ctx": 24}


def tiny_gpt(d_vocab: int = 20) -> GPT:
    """A tiny GPT with spread-out logits (a fresh init's are nearly uniform: ties in argmax)."""
    gpt = GPT(GPTConfig(**TINY, d_vocab=d_vocab), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in gpt.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.5)
    return gpt.eval()


def prompt(batch=2, pos=4, d_vocab=20):
    return torch.randint(0, d_vocab, (batch, pos), generator=torch.Generator().manual_seed(3))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_logits(rows: int, vocab: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=seeded(seed)) * 2


# --- sampling filters ---------------------------------------------------------------------------


def test_temperature_to_zero_is_argmax():
    logits = random_logits(500)
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next(logits, temperature=0), greedy)
    assert torch.equal(sample_next(logits, temperature=1e-6, generator=seeded()), greedy)
    gpt = tiny_gpt()
    cold = generate(gpt, prompt(), 12, temperature=1e-6, generator=seeded())
    assert torch.equal(cold, generate(gpt, prompt(), 12, temperature=0))
    warm = generate(gpt, prompt(), 12, temperature=1.0, generator=seeded())
    assert not torch.equal(warm, cold), "temperature 1 should not be greedy"


def test_top_k_never_samples_outside_the_top_k():
    logits = random_logits(1, seed=4)
    k = 5
    top = set(logits[0].topk(k).indices.tolist())
    draws = sample_next(logits.expand(20_000, -1), top_k=k, generator=seeded())
    assert set(draws.tolist()) == top  # none outside, and every one of the k is reachable
    kept = filter_top_k(random_logits(200), k)
    assert torch.equal(torch.isfinite(kept).sum(-1), torch.full((200,), k))


def smallest_nucleus(probs: torch.Tensor, p: float) -> set[int]:
    """Reference: the fewest most-likely tokens whose probability reaches p (brute force)."""
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))
    for n in range(1, len(order) + 1):
        if sum(float(probs[i]) for i in order[:n]) >= p:
            return set(order[:n])
    return set(order)


@pytest.mark.parametrize("p", [0.5, 0.7, 0.9])
def test_top_p_never_samples_outside_the_smallest_set_reaching_p(p):
    probs = torch.tensor([0.07, 0.3, 0.1, 0.2, 0.25, 0.08])  # sets: 0.5 -> 2, 0.7 -> 3, 0.9 -> 5
    logits = probs.log()[None]
    nucleus = smallest_nucleus(probs, p)
    assert len(nucleus) == {0.5: 2, 0.7: 3, 0.9: 5}[p]
    draws = sample_next(logits.expand(20_000, -1), top_p=p, generator=seeded())
    assert set(draws.tolist()) == nucleus
    for row in random_logits(100, seed=5):  # against the reference on random distributions
        kept = torch.isfinite(filter_top_p(row[None], p))[0]
        assert set(kept.nonzero().flatten().tolist()) == smallest_nucleus(row.softmax(-1), p)


def test_bad_sampling_settings_are_refused():
    gpt = tiny_gpt()
    for kwargs, match in [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ]:
        with pytest.raises(ValueError, match=match):
            generate(gpt, prompt(), 2, **kwargs)


# --- generate -----------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_samples():
    gpt = tiny_gpt()
    runs = [
        generate(gpt, prompt(), 16, top_k=8, top_p=0.9, generator=seeded(seed))
        for seed in (7, 7, 8)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    uncached = generate(gpt, prompt(), 16, top_k=8, top_p=0.9, generator=seeded(7), use_cache=False)
    assert torch.equal(uncached, runs[0])


def test_greedy_is_the_same_with_and_without_the_kv_cache():
    gpt = tiny_gpt()
    # 4 + 20 = n_ctx: past n_ctx / 2, where TransformerLens's own cached generate goes wrong
    cached, cached_logits = generate(gpt, prompt(), 20, temperature=0, return_logits=True)
    plain, plain_logits = generate(
        gpt, prompt(), 20, temperature=0, use_cache=False, return_logits=True
    )
    assert cached.shape == (2, 24) and torch.equal(cached[:, :4], prompt())
    assert torch.equal(cached, plain)
    assert cached_logits.shape == (2, 20, 20)
    torch.testing.assert_close(cached_logits, plain_logits, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # and the logits are the model's at each position
        torch.testing.assert_close(gpt(cached)[:, 3:-1], plain_logits, atol=1e-4, rtol=1e-4)


def test_a_hooked_transformer_generates_what_ours_does():
    gpt = tiny_gpt()
    hooked = to_hooked(gpt)
    ours, ours_logits = generate(gpt, prompt(), 20, temperature=0, return_logits=True)
    for use_cache in (True, False):
        theirs, theirs_logits = generate(
            hooked, prompt(), 20, temperature=0, use_cache=use_cache, return_logits=True
        )
        assert torch.equal(theirs, ours)
        torch.testing.assert_close(theirs_logits, ours_logits, atol=1e-4, rtol=1e-4)
    sampled = generate(gpt, prompt(), 20, top_k=6, generator=seeded(9))
    assert torch.equal(generate(hooked, prompt(), 20, top_k=6, generator=seeded(9)), sampled)


def test_generate_refuses_to_pass_n_ctx_and_caches_only_models_it_knows():
    gpt = tiny_gpt()
    with pytest.raises(ValueError, match="n_ctx=24"):
        generate(gpt, prompt(), 21)

    def plain_forward(tokens):
        return gpt(tokens)

    with pytest.raises(TypeError, match="use_cache=False"):
        generate(plain_forward, prompt(), 3)
    out = generate(plain_forward, prompt(), 3, temperature=0, use_cache=False)
    assert torch.equal(out, generate(gpt, prompt(), 3, temperature=0))


def test_eos_ends_a_row():
    gpt = tiny_gpt()
    greedy = generate(gpt, prompt(), 10, temperature=0)
    eos = int(greedy[0, 6])  # row 0 emits it at its 3rd new token
    out = generate(gpt, prompt(), 10, temperature=0, eos_token_id=eos)
    first = (out[0, 4:] == eos).nonzero()[0].item() + 4
    assert torch.equal(out[0, :first], greedy[0, :first])
    assert (out[0, first:] == eos).all()
    assert out.shape == greedy.shape


# --- beam search --------------------------------------------------------------------------------


def sequence_logprob(model, tokens, prompt_len):
    with torch.no_grad():
        logprobs = model(tokens).log_softmax(-1)
    picked = logprobs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    return picked[:, prompt_len - 1 :].sum(-1)


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_width_one_is_greedy(use_cache):
    gpt = tiny_gpt()
    beam, score = beam_search(gpt, prompt(), 12, beams=1, use_cache=use_cache)
    assert torch.equal(beam, generate(gpt, prompt(), 12, temperature=0))
    torch.testing.assert_close(score, sequence_logprob(gpt, beam, 4), atol=1e-4, rtol=1e-4)


def test_a_wide_enough_beam_is_exhaustive():
    gpt = tiny_gpt(d_vocab=5)
    start = prompt(batch=8, d_vocab=5)
    beam, score = beam_search(gpt, start, 3, beams=25)  # 5 ** (3 - 1): keeps every prefix
    for row in range(8):
        candidates = torch.tensor(
            [start[row].tolist() + list(c) for c in itertools.product(range(5), repeat=3)]
        )
        scores = sequence_logprob(gpt, candidates, 4)
        assert torch.equal(beam[row], candidates[scores.argmax()])
        torch.testing.assert_close(score[row], scores.max(), atol=1e-4, rtol=1e-4)
    greedy = generate(gpt, start, 3, temperature=0)
    assert (beam != greedy).any(), "no row where the best sequence is not greedy's: a weak test"
    assert (score >= sequence_logprob(gpt, greedy, 4) - 1e-5).all()


def test_a_beam_returns_a_sequence_with_the_score_it_reports():
    gpt = tiny_gpt(d_vocab=5)
    start = prompt(batch=8, d_vocab=5)
    beam, score = beam_search(gpt, start, 6, beams=3)
    torch.testing.assert_close(score, sequence_logprob(gpt, beam, 4), atol=1e-4, rtol=1e-4)
    greedy = generate(gpt, start, 6, temperature=0)
    assert (beam != greedy).any(), "no row where the beam beats greedy: a weak test"
    assert (score >= sequence_logprob(gpt, greedy, 4) - 1e-5).all()


def test_beam_search_is_the_same_on_a_hooked_transformer_and_without_cache():
    gpt = tiny_gpt()
    ours, score = beam_search(gpt, prompt(), 10, beams=4)
    for model, use_cache in ((to_hooked(gpt), True), (gpt, False)):
        theirs, their_score = beam_search(model, prompt(), 10, beams=4, use_cache=use_cache)
        assert torch.equal(theirs, ours)
        torch.testing.assert_close(their_score, score, atol=1e-4, rtol=1e-4)


# --- the benchmark ------------------------------------------------------------------------------


@pytest.mark.slow
def test_generation_benchmark_quick_run():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--quick", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ours-cache tokens == ours-nocache, tl-cache: True" in proc.stdout
    assert "hf-cache tokens == hf-nocache: True" in proc.stdout
