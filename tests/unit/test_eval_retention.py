"""Retention metrics against naive full-forward computations: PPL_ret (per-example mean and
corpus), JSD between tuned and base distributions, gold-completion fit, and the base sources
(the model itself, a separate copy, a LoRA model's adapter-disabled weights)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from unisd.evaluation.retention import retention_metrics
from unisd.evaluation.runner import evaluate
from unisd.models.tiny import tiny_model
from unisd.tasks import get_task

PROMPTS = [[257, 72, 105, 10], [257, 50, 43, 50, 61], [257, 81]]
COMPLETIONS = [[52, 10, 258], [53], [65, 66, 67, 68, 258]]
GOLD = [[52, 258], [], [70, 71, 258]]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=0, init_std=0.2)


def naive_logits(model, prompt, completion) -> torch.Tensor:
    """[len(completion), V] float32 logits predicting each completion token, one unpadded forward."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    return logits[len(prompt) - 1: len(prompt) - 1 + len(completion)]


def naive_token_logp(model, prompt, completion) -> list[float]:
    logp = torch.log_softmax(naive_logits(model, prompt, completion), dim=-1)
    return [logp[j, t].item() for j, t in enumerate(completion)]


def mean_ppl(token_logps) -> float:
    """Mean over examples of exp(-mean token log-prob)."""
    return sum(math.exp(-sum(t) / len(t)) for t in token_logps) / len(token_logps)


def naive_jsd(p_logits, q_logits) -> list[float]:
    p, q = torch.softmax(p_logits.double(), -1), torch.softmax(q_logits.double(), -1)
    m = (p + q) / 2
    kl = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).tolist()


def nudged_lora(seed: int = 0):
    from peft import LoraConfig, get_peft_model

    from unisd.models.lora import quiet_peft

    base, tokenizer = tiny_model("llama", seed=0, init_std=0.2)
    with quiet_peft():
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
        model = get_peft_model(base, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval(), tokenizer


def test_base_against_itself_gives_zero_jsd_and_its_own_ppl(tiny):
    model, tokenizer = tiny
    per_example = [naive_token_logp(model, p, c) for p, c in zip(PROMPTS, COMPLETIONS)]
    own_ppl = [math.exp(-sum(t) / len(t)) for t in per_example]
    corpus = math.exp(-sum(map(sum, per_example)) / sum(map(len, per_example)))
    for base, label in ((None, "self"), (model, "self"), (copy.deepcopy(model), "separate")):
        out = retention_metrics(model, base, tokenizer, PROMPTS, COMPLETIONS, batch_size=2)
        assert out["base"] == label
        assert out["jsd_mean"] == pytest.approx(0.0, abs=1e-6)
        assert out["ppl_ret_mean"] == pytest.approx(sum(own_ppl) / len(own_ppl), rel=1e-5)
        assert out["ppl_ret_corpus"] == pytest.approx(corpus, rel=1e-5)
        assert out["ppl_tuned_corpus"] == pytest.approx(corpus, rel=1e-5)
        assert [r["ppl_ret"] for r in out["per_example"]] == pytest.approx(own_ppl, rel=1e-5)
        assert out["n"] == 3 and out["tokens"] == 9 and out["skipped_empty"] == 0


def test_mean_of_example_ppl_versus_corpus_ppl_by_hand(tiny):
    model, tokenizer = tiny
    prompts, completions = PROMPTS[1:], COMPLETIONS[1:]  # 1 token and 5 tokens
    a = naive_token_logp(model, prompts[0], completions[0])
    b = naive_token_logp(model, prompts[1], completions[1])
    out = retention_metrics(model, None, tokenizer, prompts, completions)
    by_example = (math.exp(-a[0]) + math.exp(-sum(b) / 5)) / 2  # the published PPL_ret
    corpus = math.exp(-(a[0] + sum(b)) / 6)                      # every token weighs the same
    assert out["ppl_ret_mean"] == pytest.approx(by_example, rel=1e-5)
    assert out["ppl_ret_corpus"] == pytest.approx(corpus, rel=1e-5)
    assert out["lp_mean"] == pytest.approx((a[0] + sum(b) / 5) / 2, abs=1e-5)
    assert out["lp_p50"] == pytest.approx((a[0] + sum(b) / 5) / 2, abs=1e-5)  # median of two
    assert abs(out["ppl_ret_mean"] - out["ppl_ret_corpus"]) > 1e-3  # they differ in general


def test_lora_adapter_disabled_base_gives_positive_jsd_matching_naive():
    tuned, tokenizer = nudged_lora()
    plain, _ = tiny_model("llama", seed=0, init_std=0.2)  # the same base weights, no adapter
    out = retention_metrics(tuned, None, tokenizer, PROMPTS, COMPLETIONS, GOLD, batch_size=2)
    assert out["base"] == "adapter_disabled"
    base_lp = [naive_token_logp(plain, p, c) for p, c in zip(PROMPTS, COMPLETIONS)]
    assert out["ppl_ret_mean"] == pytest.approx(mean_ppl(base_lp), rel=1e-4)
    jsd = [naive_jsd(naive_logits(plain, p, c), naive_logits(tuned, p, c))
           for p, c in zip(PROMPTS, COMPLETIONS)]
    per_example = [sum(t) / len(t) for t in jsd]
    assert out["jsd_mean"] > 1e-4
    assert out["jsd_mean"] == pytest.approx(sum(per_example) / 3, rel=1e-4)
    assert [r["jsd"] for r in out["per_example"]] == pytest.approx(per_example, rel=1e-4)
    assert out["jsd_mean"] <= math.log(2)
    # gold fit is under the TUNED model, on the rows that have a gold completion
    gold_lp = [naive_token_logp(tuned, PROMPTS[i], GOLD[i]) for i in (0, 2)]
    assert out["gold_n"] == 2 and out["gold_tokens"] == 5
    assert out["gold_fit_ppl_corpus"] == pytest.approx(math.exp(-sum(map(sum, gold_lp)) / 5), rel=1e-5)
    assert out["gold_fit_ppl_mean"] == pytest.approx(mean_ppl(gold_lp), rel=1e-5)
    assert "gold_fit_ppl" not in out["per_example"][1]
    # the same numbers from a separately loaded base model
    sep = retention_metrics(tuned, plain, tokenizer, PROMPTS, COMPLETIONS, batch_size=3)
    assert sep["base"] == "separate" and sep["jsd_mean"] == pytest.approx(out["jsd_mean"], rel=1e-4)
    assert sep["ppl_ret_corpus"] == pytest.approx(out["ppl_ret_corpus"], rel=1e-5)
    # the adapter is back on afterwards: the tuned model still gives its own logits, not the base's
    after = naive_logits(tuned, PROMPTS[0], COMPLETIONS[0])
    assert torch.allclose(after, naive_logits(tuned.get_base_model(), PROMPTS[0], COMPLETIONS[0]))
    assert not torch.allclose(after, naive_logits(plain, PROMPTS[0], COMPLETIONS[0]), atol=1e-3)


def test_empty_completions_are_skipped_and_counted(tiny):
    model, tokenizer = tiny
    out = retention_metrics(model, None, tokenizer, PROMPTS, [COMPLETIONS[0], [], COMPLETIONS[2]])
    ref = retention_metrics(model, None, tokenizer, [PROMPTS[0], PROMPTS[2]],
                            [COMPLETIONS[0], COMPLETIONS[2]])
    assert out["skipped_empty"] == 1 and out["n"] == 2 and out["per_example"][1] is None
    assert out["ppl_ret_mean"] == pytest.approx(ref["ppl_ret_mean"], rel=1e-6)
    none = retention_metrics(model, None, tokenizer, PROMPTS[:1], [[]])
    assert none["n"] == 0 and none["ppl_ret_mean"] is None and none["jsd_mean"] is None


def test_long_rows_lose_prompt_tokens_from_the_front(tiny):
    model, tokenizer = tiny
    out = retention_metrics(model, None, tokenizer, [PROMPTS[0]], [COMPLETIONS[0]], max_length=4)
    cut = naive_token_logp(model, PROMPTS[0][-1:], COMPLETIONS[0])  # 1 prompt token + 3 completion tokens
    assert out["truncated"] == 1
    assert out["ppl_ret_corpus"] == pytest.approx(math.exp(-sum(cut) / 3), rel=1e-5)


def test_evaluate_reports_retention_for_a_lora_model():
    tuned, tokenizer = nudged_lora()
    tuned.train()
    task = get_task("arithmetic")
    examples = task.load("test", limit=3)
    result = evaluate(tuned, tokenizer, task, examples, max_new_tokens=6, batch_size=2, show_progress=False,
                      retention=True)
    assert tuned.training  # mode restored
    ret = result["aggregate"]["retention"]
    assert ret["base"] == "adapter_disabled" and ret["n"] == 3 and ret["jsd_mean"] > 0
    assert ret["gold_n"] == 3 and ret["gold_fit_ppl_corpus"] > 1
    assert "per_example" not in ret
    for it in result["items"]:
        assert set(it["retention"]) == {"tokens", "lp", "ppl_ret", "jsd", "gold_fit_ppl"}
    assert "retention" not in evaluate(tuned, tokenizer, task, examples[:1], max_new_tokens=2,
                                       show_progress=False)["aggregate"]
