"""Cloze (option log-likelihood) scoring against a naive full-forward computation, and its wiring
into `evaluate`: the chosen option is the argmax of the per-token mean log-prob."""

from __future__ import annotations

import math

import pytest
import torch

from unisd.evaluation.loglik import cloze_rows, option_logprobs, score_options
from unisd.evaluation.runner import evaluate
from unisd.models.tiny import tiny_model
from unisd.tasks.base import Example, Score, letters
from unisd.tasks.mcqa import MultipleChoiceTask, build_example, cloze_prompt, score_letter


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=0, init_std=0.2)  # peaky enough that options differ


class MixedTask:
    """Letter scoring for multiple choice, nothing for free-form rows (as the jsonl task mixes them)."""

    name = "mixed"

    def score(self, example, completion):
        return score_letter(example, completion) if example.choices else Score(0.0, None, {"strict": 0.0})


def mc_examples() -> list[Example]:
    rows = [("What colour is the sky?", ["blue", "green as grass", "red"], 0),
            ("2 + 2 =", ["4", "five", "twenty-two", "0"], 0),
            ("Capital of France?", ["Paris", "Rome"], 1)]
    return [build_example(f"q{i}", q, opts, gold, seed=0, shuffle=False)
            for i, (q, opts, gold) in enumerate(rows)]


def naive_option_logps(model, tokenizer, example) -> list[list[float]]:
    """Per option, the per-token log-probs of its continuation from one unpadded full forward."""
    out = []
    for context, continuation in cloze_rows(tokenizer, example):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        out.append([logp[len(context) - 1 + j, tok].item() for j, tok in enumerate(continuation)])
    return out


def test_cloze_rows_are_raw_text_context_and_spaced_option(tiny):
    _, tokenizer = tiny
    ex = mc_examples()[0]
    context, continuation = cloze_rows(tokenizer, ex)[1]
    assert tokenizer.decode(context) == cloze_prompt(ex) == "Question: What colour is the sky?\nAnswer:"
    assert tokenizer.decode(continuation) == " green as grass"  # no chat template, leading space kept


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_option_logprobs_match_naive_forward(tiny, batch_size):
    model, tokenizer = tiny
    examples = mc_examples()
    sums = option_logprobs(model, tokenizer, examples, batch_size=batch_size)
    means = option_logprobs(model, tokenizer, examples, batch_size=batch_size, normalise="mean_token")
    for ex, s_row, m_row in zip(examples, sums, means):
        naive = naive_option_logps(model, tokenizer, ex)
        assert len(s_row) == len(ex.choices)
        assert s_row == pytest.approx([sum(t) for t in naive], abs=1e-4)
        assert m_row == pytest.approx([sum(t) / len(t) for t in naive], abs=1e-5)
    lengths = score_options(model, tokenizer, examples, batch_size=batch_size).lengths
    assert lengths[0] == [len(" blue"), len(" green as grass"), len(" red")]  # byte tokenizer: 1 token a byte


def test_option_logprobs_rejects_unknown_normalisation(tiny):
    with pytest.raises(ValueError, match="normalise"):
        option_logprobs(*tiny, mc_examples(), normalise="bytes")


def test_evaluate_cloze_picks_highest_mean_logp(tiny):
    model, tokenizer = tiny
    examples = mc_examples()
    free = Example(id="free", prompt="Say hi", answer="hi")
    result = evaluate(model, tokenizer, MixedTask(), examples + [free], max_new_tokens=4, batch_size=2,
                      show_progress=False)
    agg, items = result["aggregate"], result["items"]
    assert agg["cloze_norm"] == "mean_token"
    assert agg["cloze"]["n"] == agg["cloze_sum"]["n"] == len(examples)  # the free-form item is left out
    assert "cloze" not in items[-1]["details"]
    expected = []
    for ex, it in zip(examples, items):
        naive = naive_option_logps(model, tokenizer, ex)
        mean = [sum(t) / len(t) for t in naive]
        total = [sum(t) for t in naive]
        best = letters(len(ex.choices))[max(range(len(mean)), key=mean.__getitem__)]
        best_sum = letters(len(ex.choices))[max(range(len(total)), key=total.__getitem__)]
        assert it["cloze"]["choice"] == best and it["cloze"]["choice_sum"] == best_sum
        assert it["details"]["cloze"] == float(best == ex.answer)
        assert it["details"]["cloze_sum"] == float(best_sum == ex.answer)
        assert it["cloze"]["logprob_sums"] == pytest.approx(total, abs=1e-4)
        expected.append(float(best == ex.answer))
    assert agg["cloze"]["mean"] == pytest.approx(sum(expected) / len(expected))
    assert not math.isnan(agg["cloze"]["lo"])


def test_evaluate_cloze_can_be_turned_off(tiny):
    model, tokenizer = tiny
    result = evaluate(model, tokenizer, MultipleChoiceTask(), mc_examples()[:1], max_new_tokens=2,
                      show_progress=False, cloze=False)
    assert "cloze" not in result["aggregate"] and "cloze" not in result["items"][0]["details"]
