"""Generator backends on a tiny random Llama (CPU): parity against a naive no-cache loop.

FastGenerator runs its decode step eagerly on CPU - the same function that is CUDA-graphed on GPU -
so these tests check its cache slots, position ids, masks, EOS handling and batch compaction.
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

from unisd.generation import GENERATORS, get_generator
from unisd.generation._util import cut_at_eos, left_pad
from unisd.generation.base import SamplingParams
from unisd.generation.fast import (FastGenerator, _decode_step, _forward_last_logits, batch_bucket,
                                 sample_tokens)
from unisd.generation.hf import HFGenerator

PAD = 0
needs_cxx = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                               reason="inductor on CPU needs a C++ compiler")
LENGTHS = (3, 7, 5, 1, 9, 4, 6)  # different lengths: left padding matters


def _tiny_llama(attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return _tiny_llama()


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in LENGTHS]


def fast_gen(**kw) -> FastGenerator:
    # small buckets and a sync every step, so compaction triggers on tiny batches
    return FastGenerator(**{"min_bucket": 1, "check_every": 1, "cache_len_multiple": 16, **kw})


@torch.no_grad()
def naive_greedy(model, prompts, max_new, eos):
    """Reference: full forward over the whole left-padded sequence each step, no cache."""
    ids, mask = left_pad(prompts, PAD, torch.device("cpu"))
    done = torch.zeros(len(prompts), dtype=torch.bool)
    out = []
    for _ in range(max_new):
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
        tok = torch.where(done, PAD, logits.argmax(-1))
        done |= torch.isin(tok, torch.tensor(eos, dtype=torch.long))
        out.append(tok)
        ids = torch.cat([ids, tok[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        if done.all():
            break
    rows = torch.stack(out, 1).tolist()
    return [cut_at_eos(r, eos, max_new) for r in rows]


@pytest.fixture(scope="module")
def stop_token(model, prompts):
    """An EOS that greedy decoding emits mid-way in some rows but not in others."""
    free = naive_greedy(model, prompts, 16, eos=[])
    counts = {}
    for row in free:
        for tok in set(row[2:]):
            counts[tok] = counts.get(tok, 0) + 1
    tok = max(counts, key=lambda t: (0 < counts[t] < len(prompts), counts[t]))
    assert 0 < counts[tok] < len(prompts)
    return tok


GREEDY = SamplingParams(max_new_tokens=16, temperature=0.0)


# ----- greedy parity -----------------------------------------------------------------------------

def test_greedy_hf_fast_and_naive_agree(model, prompts, stop_token):
    ref = naive_greedy(model, prompts, 16, eos=[stop_token])
    assert {len(r) for r in ref} != {16}, "some rows should stop early"
    assert any(len(r) == 16 for r in ref), "some rows should run to the limit"
    hf = HFGenerator().generate(model, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD)
    fast = fast_gen(compact=False).generate(model, prompts, GREEDY, eos_token_ids=[stop_token],
                                            pad_token_id=PAD)
    assert hf == ref
    assert fast == ref


def test_fast_compaction_keeps_outputs(model, prompts, stop_token):
    ref = naive_greedy(model, prompts, 16, eos=[stop_token])
    gen = fast_gen()
    assert gen.generate(model, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD) == ref
    assert gen.last_stats["compactions"] >= 1


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_fast_matches_hf_per_attention_implementation(attn, prompts):
    m = _tiny_llama(attn)
    hf = HFGenerator().generate(m, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD)
    assert fast_gen().generate(m, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == hf


def test_fast_reuses_workspaces_across_calls_and_batch_splits(model, prompts, stop_token):
    gen = fast_gen(max_workspaces=2)
    eos = [stop_token]
    for subset in (prompts, prompts[:3], prompts[2:], prompts):  # new and reused (bucket, length) shapes
        assert gen.generate(model, subset, GREEDY, eos_token_ids=eos, pad_token_id=PAD) == \
            naive_greedy(model, subset, 16, eos)
    split = fast_gen(max_batch=3).generate(model, prompts, GREEDY, eos_token_ids=eos, pad_token_id=PAD)
    assert split == naive_greedy(model, prompts, 16, eos)


@pytest.mark.parametrize("name", ["hf", "fast"])
def test_length_limit_and_eos_cut(name, model, prompts, stop_token):
    gen = fast_gen() if name == "fast" else HFGenerator()
    for max_new in (1, 5):
        params = SamplingParams(max_new_tokens=max_new, temperature=0.0)
        outs = gen.generate(model, prompts, params, eos_token_ids=[stop_token], pad_token_id=PAD)
        assert all(1 <= len(o) <= max_new for o in outs)
    outs = gen.generate(model, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD)
    for o in outs:
        assert stop_token not in o[:-1]  # EOS only ever last
        assert len(o) == 16 or o[-1] == stop_token


def test_no_eos_runs_to_the_limit(model, prompts):
    for gen in (HFGenerator(), fast_gen()):
        outs = gen.generate(model, prompts, GREEDY, eos_token_ids=[], pad_token_id=PAD)
        assert [len(o) for o in outs] == [16] * len(prompts)


# ----- sampling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hf", "fast"])
def test_sampling_reproducible_with_seeded_rng(name, model, prompts):
    gen = fast_gen() if name == "fast" else HFGenerator()
    params = SamplingParams(max_new_tokens=12, temperature=1.3, top_p=0.9)

    def run(seed):
        return gen.generate(model, prompts, params, eos_token_ids=[2], pad_token_id=PAD,
                            rng=torch.Generator().manual_seed(seed))

    torch.manual_seed(123)
    before = torch.rand(1)
    a, b, c = run(7), run(7), run(8)
    torch.manual_seed(123)
    assert torch.equal(before, torch.rand(1)), "the global RNG is restored"
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", ["hf", "fast"])
def test_tiny_top_p_is_greedy(name, model, prompts):
    gen = fast_gen() if name == "fast" else HFGenerator()
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=1e-6)
    outs = gen.generate(model, prompts, params, eos_token_ids=[2], pad_token_id=PAD,
                        rng=torch.Generator().manual_seed(0))
    assert outs == naive_greedy(model, prompts, 16, eos=[2])


@torch.no_grad()
def test_fast_samples_stay_in_the_nucleus(model, prompts):
    top_p = 0.3
    params = SamplingParams(max_new_tokens=10, temperature=2.0, top_p=top_p)
    outs = fast_gen().generate(model, prompts, params, eos_token_ids=[], pad_token_id=PAD,
                               rng=torch.Generator().manual_seed(3))
    for prompt, out in zip(prompts, outs):
        seq = torch.tensor([prompt + out])
        probs = (model(input_ids=seq).logits[0, len(prompt) - 1:-1] / 2.0).softmax(-1)
        for step, tok in enumerate(out):
            p = probs[step]
            mass_above = p[p > p[tok]].sum()
            assert mass_above < top_p + 1e-5, f"token {tok} is outside the top-{top_p} nucleus"


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=needs_cxx)], ids=["eager", "compiled"])
def test_sample_tokens_distribution_and_top_p(compiled):
    # compiled: inside the compiled decode step sampling draws from inductor's RNG, not eager
    # torch's; the distribution, not the stream, is what must match
    torch._dynamo.reset()
    sampler = torch.compile(sample_tokens) if compiled else sample_tokens
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(20000, 1)
    one, half = torch.tensor(1.0), torch.tensor(0.7)
    freq = torch.bincount(sampler(logits, "sample", one, one), minlength=4).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015)
    # top_p=0.7: mass above token 1 is 0.5 < 0.7 (kept), above token 2 is 0.8 (dropped)
    freq = torch.bincount(sampler(logits, "top_p", one, half), minlength=4).float() / 20000
    assert freq[2:].sum() == 0
    assert torch.allclose(freq[:2], torch.tensor([0.625, 0.375]), atol=0.015)
    assert sampler(logits[:3], "greedy", one, one).tolist() == [0, 0, 0]
    torch._dynamo.reset()


# ----- peft --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_model():
    from peft import LoraConfig, get_peft_model

    base = _tiny_llama()
    torch.manual_seed(5)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                     init_lora_weights=False)  # random B, so the adapter changes outputs
    return get_peft_model(base, cfg).eval()


def test_lora_model_in_both_backends(lora_model, model, prompts):
    ref = naive_greedy(lora_model, prompts, 16, eos=[2])
    assert ref != naive_greedy(model, prompts, 16, eos=[2]), "the adapter should matter"
    gen = fast_gen()
    assert HFGenerator().generate(lora_model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == ref
    assert gen.generate(lora_model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == ref
    with lora_model.disable_adapter():  # adapter state is part of the cache key
        base_ref = naive_greedy(lora_model, prompts, 16, eos=[2])
        assert gen.generate(lora_model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == base_ref


def test_lora_in_place_update_is_seen(prompts):
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False)).eval()
    gen = fast_gen()
    gen.generate(m, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD)
    with torch.no_grad():  # what an optimizer step does: same tensors, new values
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.mul_(-3.0)
    assert gen.generate(m, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == \
        naive_greedy(m, prompts, 16, eos=[2])


# ----- plumbing ----------------------------------------------------------------------------------

def test_fast_options_reach_only_the_fast_generator():
    from unisd.generation import fast_options

    assert fast_options() == {}
    assert fast_options("sdpa", graph_prefill=False) == {"attention": [], "graph_prefill": False}
    fast = get_generator("fast", "cpu", fast_options=fast_options("flex"))
    assert fast.attention == ("flex",) and fast.graph_prefill is None
    assert isinstance(get_generator("auto", "cpu", fast_options=fast_options("flex")), HFGenerator)
    assert get_generator("fast", "cpu", fast_options=fast_options("sdpa"))._decode_attention(
        torch.device("cpu")) is None


def test_get_generator_names():
    assert set(GENERATORS) == {"hf", "fast", "vllm"}
    assert isinstance(get_generator("auto", torch.device("cpu")), HFGenerator)
    assert isinstance(get_generator("fast", "cpu"), FastGenerator)
    with pytest.raises(ValueError, match="unknown generator"):
        get_generator("nope")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_missing_names_the_extra(model, prompts):
    gen = get_generator("vllm", model_path="x")
    with pytest.raises(ImportError, match=r"pip install unisd\[vllm\]"):
        gen.generate(model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD)


def test_helpers():
    assert cut_at_eos([5, 2, 7, 2], [2], 10) == [5, 2]
    assert cut_at_eos([5, 6, 7], [2], 2) == [5, 6]
    ids, mask = left_pad([[4, 5], [6]], PAD, torch.device("cpu"), rows=3)
    assert ids.tolist() == [[4, 5], [PAD, 6], [PAD, PAD]]
    assert mask.tolist() == [[1, 1], [0, 1], [0, 1]]
    assert [batch_bucket(n, 8) for n in (1, 9, 64, 65, 200)] == [8, 16, 64, 128, 256]
    for bad in (SamplingParams(max_new_tokens=0), SamplingParams(temperature=-1), SamplingParams(top_p=0)):
        with pytest.raises(ValueError):
            fast_gen().generate(None, [[1]], bad, eos_token_ids=[2], pad_token_id=PAD)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_greedy_matches_hf(prompts, stop_token):
    m = _tiny_llama().cuda()
    hf = HFGenerator().generate(m, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD)
    for compile_ in (False, True):
        gen = FastGenerator(compile=compile_, min_bucket=1, check_every=2)
        assert gen.generate(m, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD) == hf
        assert gen.last_stats["graphs_captured"] >= 1
        # the prompt pass: eager on a width's first call, captured on the second, replayed on the third
        for _ in range(2):
            assert gen.generate(m, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD) == hf
        (ws,) = gen._workspaces.values()
        assert len(ws.prefills) == 1


def test_grouped_sdpa_matches_hf_sdpa():
    """The decode-time attention FastGenerator switches to equals HF's sdpa (repeat_kv) on one query token."""
    from types import SimpleNamespace

    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from unisd.generation.attention import GROUPED_SDPA, register_grouped_sdpa

    register_grouped_sdpa()
    grouped = AttentionInterface._global_mapping[GROUPED_SDPA]
    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    q, k, v = torch.randn(4, 6, 1, 8), torch.randn(4, 2, 10, 8), torch.randn(4, 2, 10, 8)
    mask = torch.rand(4, 1, 1, 10) > 0.3
    mask[..., 0] = True
    ours, _ = grouped(module, q, k, v, mask, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert ours.shape == ref.shape == (4, 1, 6, 8)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_attention_switch_is_restored(model, prompts):
    seen = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda mod, args: seen.append(mod.config._attn_implementation))
    try:
        fast_gen().generate(model, prompts, SamplingParams(max_new_tokens=3, temperature=0.0),
                            eos_token_ids=[2], pad_token_id=PAD)
    finally:
        hook.remove()
    assert set(seen) == {"unisd_grouped_sdpa"}
    assert model.config._attn_implementation == "sdpa"


# ----- fused decode projections ------------------------------------------------------------------

def _count_linears(fn, *args) -> int:
    """F.linear calls in the graph torch.compile traces for fn(*args) (dynamo only, no inductor)."""
    seen = []

    def backend(gm, example_inputs):
        seen.append(sum(1 for n in gm.graph.nodes if n.op == "call_function"
                        and n.target in (torch._C._nn.linear, torch.nn.functional.linear)))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    torch._dynamo.reset()
    return sum(seen)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q/k/v carry biases
def test_fused_decode_matches_naive_greedy(arch, prompts):
    from unisd.models.tiny import tiny_model

    m, _ = tiny_model(arch, layers=2)
    ref = naive_greedy(m, prompts, 16, eos=[2])
    gen = fast_gen(fuse=True)
    assert gen.generate(m, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == ref
    assert gen._weights and len(gen._weights.groups) == 2 * 2  # q/k/v and gate/up per layer
    assert type(m.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # restored afterwards


def test_fused_decode_with_lora_and_adapter_toggles(lora_model, prompts):
    # lora_model wraps q_proj, v_proj and down_proj: k_proj joins its group with an empty B block
    ref = naive_greedy(lora_model, prompts, 16, eos=[2])
    gen = fast_gen(fuse=True)
    assert gen.generate(lora_model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == ref
    groups = {g.names: g for g in gen._weights.groups}
    assert set(groups) == {("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("down_proj",)}
    assert groups[("q_proj", "k_proj", "v_proj")].lora_a.shape[0] == 2 * 4  # q and v, rank 4 each
    with lora_model.disable_adapter():  # rebuilt without adapters: the plain base model
        assert gen.generate(lora_model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == \
            naive_greedy(lora_model, prompts, 16, eos=[2])
        assert all(g.lora_a is None for g in gen._weights.groups)


def test_fused_decode_sees_in_place_updates(prompts):
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"],
                                                 init_lora_weights=False)).eval()
    gen = fast_gen(fuse=True)
    gen.generate(m, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD)
    with torch.no_grad():  # an optimizer step: same tensors, new values (LoRA and base weights)
        for name, p in m.named_parameters():
            if "lora_B" in name or "gate_proj" in name:
                p.mul_(-3.0)
    assert gen.generate(m, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == \
        naive_greedy(m, prompts, 16, eos=[2])


def test_fused_projections_trace_to_fewer_matmuls(lora_model):
    from unisd.generation.fused import DecodeWeights

    ids = torch.tensor([[5, 6, 7]])

    def logits(model):
        return model(input_ids=ids, use_cache=False).logits

    base = _tiny_llama()
    plain = _count_linears(logits, base)
    weights = DecodeWeights(base)
    with weights.patched():
        fused = _count_linears(logits, base)
    assert (plain, fused) == (2 * 7 + 1, 2 * 4 + 1)  # per layer: 7 projections -> 4 GEMMs; + LM head
    with torch.no_grad():
        lora = _count_linears(logits, lora_model)
        weights = DecodeWeights(lora_model)
        with weights.patched():
            lora_fused = _count_linears(logits, lora_model)
    # peft: 3 linears per LoRA projection (q, v, down: base, A, B) + 4 plain ones. Fused: q/k/v base and
    # A in one (B in an addmm), gate/up 1, o_proj (plain, untouched) 1, down base and A in one
    assert lora == 2 * (4 + 3 * 3) + 1 and lora_fused == 2 * (1 + 1 + 1 + 1) + 1


def test_fused_check_falls_back_when_the_call_order_differs(monkeypatch, model, prompts):
    from unisd.generation import fused

    monkeypatch.setattr(fused, "GROUPS", (("v_proj", "k_proj", "q_proj"),))  # HF calls q_proj first
    gen = fast_gen(fuse=True)
    with pytest.warns(UserWarning, match="do not reproduce"):
        out = gen.generate(model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD)
    assert out == naive_greedy(model, prompts, 16, eos=[2]) and gen._weights is None
    assert type(model.model.layers[0].self_attn.v_proj) is torch.nn.Linear


def test_patched_restores_modules_on_error(model):
    from unisd.generation.fused import DecodeWeights

    weights = DecodeWeights(model)
    attn = model.model.layers[0].self_attn
    original = attn.q_proj
    with pytest.raises(ValueError), weights.patched():
        assert attn.q_proj is not original
        raise ValueError("boom")
    assert attn.q_proj is original and all(g.product is None for g in weights.groups)


@needs_cxx
def test_fused_decode_compiled_with_inductor_matches(lora_model, prompts):
    # the real torch.compile (inductor, CPU) over the shims: the stashed q/k/v product is a traced
    # side effect, so this is the path the CUDA graph captures on GPU
    ref = naive_greedy(lora_model, prompts, 16, eos=[2])
    torch._dynamo.reset()
    gen = fast_gen(compile=True, fuse=True)
    assert gen.generate(lora_model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == ref
    assert gen.generate(lora_model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD) == ref
    assert gen._compiled and len(gen._weights.groups) == 2 * 3
    torch._dynamo.reset()


def test_fused_check_runs_once_per_model(lora_model, prompts, monkeypatch):
    gen = fast_gen(fuse=True)
    calls = []
    real = gen._check_fused
    monkeypatch.setattr(gen, "_check_fused", lambda *a: calls.append(1) or real(*a))
    gen.generate(lora_model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD)
    with lora_model.disable_adapter():  # a new fingerprint: weights rebuilt, not checked again
        gen.generate(lora_model, prompts, GREEDY, eos_token_ids=[2], pad_token_id=PAD)
        assert gen._weights
    assert calls == [1]


# ----- compiled step, compiled prefill, attention backends ------------------------------------------

@needs_cxx
def test_compiled_step_sampling_is_seeded(model, prompts):
    torch._dynamo.reset()
    gen = fast_gen(compile=True)
    params = SamplingParams(max_new_tokens=12, temperature=1.3, top_p=0.9)

    def run(seed, p=params):
        return gen.generate(model, prompts, p, eos_token_ids=[2], pad_token_id=PAD,
                            rng=torch.Generator().manual_seed(seed))

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(0, SamplingParams(max_new_tokens=16, temperature=1.0, top_p=1e-6)) == \
        naive_greedy(model, prompts, 16, eos=[2])
    torch._dynamo.reset()


@needs_cxx
@pytest.mark.parametrize("compile_step,compile_prefill", [(False, True), (True, False)])
def test_compile_scopes_match_greedy(model, prompts, stop_token, compile_step, compile_prefill):
    torch._dynamo.reset()
    gen = fast_gen(compile=True, compile_step=compile_step, compile_prefill=compile_prefill)
    ref = naive_greedy(model, prompts, 16, eos=[stop_token])
    assert gen.generate(model, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD) == ref
    assert (gen._prefill is not _forward_last_logits) == compile_prefill
    assert (gen._step is not _decode_step) == compile_step
    assert (gen._forward is not _forward_last_logits) == (not compile_step)
    torch._dynamo.reset()


def test_failed_prefill_compile_falls_back_to_eager(model, prompts, stop_token):
    gen = fast_gen()

    def broken(*args):
        raise RuntimeError("inductor said no")

    gen._prefill = broken  # stands in for a compiled prompt pass that fails to compile
    with pytest.warns(UserWarning, match="prompt pass failed.*inductor said no"):
        out = gen.generate(model, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD)
    assert out == naive_greedy(model, prompts, 16, eos=[stop_token])
    assert gen._prefill is _forward_last_logits


def _sdpa_flags_per_call(monkeypatch):
    """(query length, flash allowed, math allowed) at every SDPA call."""
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append((q.shape[-2], torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))
        return real(q, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


def test_attention_backends_apply_to_decoding_only(model, prompts, stop_token, monkeypatch):
    with pytest.raises(ValueError, match="unknown attention backend"):
        FastGenerator(attention=["flashy"])
    seen = _sdpa_flags_per_call(monkeypatch)
    before = torch.backends.cuda.flash_sdp_enabled()
    out = fast_gen(attention=["efficient"]).generate(model, prompts, GREEDY, eos_token_ids=[stop_token],
                                                     pad_token_id=PAD)
    assert out == naive_greedy(model, prompts, 16, eos=[stop_token])
    groups = model.config.num_attention_heads // model.config.num_key_value_heads
    decode = {tuple(flags) for q_len, *flags in seen if q_len == groups}  # grouped one-token attention
    prompt = {tuple(flags) for q_len, *flags in seen if q_len == max(LENGTHS)}
    assert decode == {(False, True)}  # flash off, math kept as the fallback
    assert prompt == {(before, True)}  # the prompt pass keeps torch's choice
    assert torch.backends.cuda.flash_sdp_enabled() == before


@needs_cxx
def test_attention_choice_retraces_the_compiled_step(model, prompts, stop_token):
    # the choice is read from a module global inside the traced attention, so torch.compile guards
    # on it: a generator with another choice must not replay a graph traced under the first
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    ref = naive_greedy(model, prompts, 16, eos=[stop_token])
    for attention in (None, ["math"]):
        out = fast_gen(compile=True, compile_prefill=False, attention=attention).generate(
            model, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD)
        assert out == ref
        if attention is None:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] > graphs
    torch._dynamo.reset()


def test_gpu_timer_is_silent_off_cuda(model, prompts):
    gen = fast_gen()
    gen.generate(model, prompts, GREEDY, eos_token_ids=[], pad_token_id=PAD)
    assert "prefill_ms" not in gen.last_stats and gen.last_stats["steps"] == 15


def test_bucketed_prompt_width_keeps_greedy_outputs(model, prompts, stop_token):
    # graph_prefill pads every prompt to a multiple of prefill_width_multiple (captured on CUDA only;
    # here the same padding runs eagerly): the extra left padding is masked out
    gen = fast_gen(graph_prefill=True, prefill_width_multiple=32)
    out = gen.generate(model, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD)
    assert out == naive_greedy(model, prompts, 16, eos=[stop_token])
    (ws,) = gen._workspaces.values()
    assert int(ws.slot) > 32 and ws.cache_len == 48  # prompt columns 0..31, then 16 new tokens
    with pytest.raises(ValueError, match="prefill_width_multiple"):
        FastGenerator(prefill_width_multiple=0)


def test_left_pad_to_a_given_width():
    ids, mask = left_pad([[5, 6], [7]], PAD, torch.device("cpu"), width=4)
    assert ids.tolist() == [[0, 0, 5, 6], [0, 0, 0, 7]] and mask.tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]]
    assert left_pad([[5, 6, 7]], PAD, torch.device("cpu"), width=2)[0].tolist() == [[5, 6, 7]]  # never cuts


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
def test_flex_decode_attention_matches_greedy(model, prompts, stop_token):
    with pytest.raises(ValueError, match="give it alone"):
        FastGenerator(attention=["flex", "math"])
    gen = fast_gen(attention=["flex"])
    out = gen.generate(model, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD)
    assert out == naive_greedy(model, prompts, 16, eos=[stop_token])


def test_flex_decode_equals_sdpa_on_one_step():
    from unisd.generation.attention import flex_decode

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 2, 8, generator=g), torch.randn(3, 2, 10, 8, generator=g),
               torch.randn(3, 2, 10, 8, generator=g))
    keep = torch.rand(3, 1, 1, 10, generator=g) > 0.3
    keep[..., -1] = True  # every row attends to something
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.3)
    for mask in (keep, torch.zeros(()).masked_fill(~keep, float("-inf"))):  # boolean and additive
        torch.testing.assert_close(flex_decode(q, k, v, mask, 0.3), ref, rtol=1e-5, atol=1e-5)


def test_compile_mode_is_checked():
    with pytest.raises(ValueError, match="unknown compile_mode"):
        FastGenerator(compile_mode="fastest")
    with pytest.raises(ValueError, match="captures CUDA graphs of its own"):
        FastGenerator(compile_mode="reduce-overhead")
    FastGenerator(compile_mode="reduce-overhead", cuda_graph=False)


def test_compile_options_default_to_combo_kernels_unless_a_mode_is_given():
    assert FastGenerator().compile_options == {"combo_kernels": True}
    assert FastGenerator(compile_options={}).compile_options is None
    assert FastGenerator(compile_mode="max-autotune-no-cudagraphs").compile_options is None
    with pytest.raises(ValueError, match="compile_mode or compile_options"):
        FastGenerator(compile_mode="max-autotune-no-cudagraphs", compile_options={"combo_kernels": True})


@needs_cxx
def test_compile_options_reach_torch_compile(model, prompts, stop_token, monkeypatch):
    seen = []
    real = torch.compile

    def spy(fn, **kwargs):
        seen.append((kwargs.get("mode"), kwargs.get("options")))
        return real(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    torch._dynamo.reset()
    gen = fast_gen(compile=True, compile_prefill=True)
    out = gen.generate(model, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD)
    assert out == naive_greedy(model, prompts, 16, eos=[stop_token])
    assert seen == [(None, {"combo_kernels": True})] * 2  # the step and the prompt pass
    torch._dynamo.reset()


@needs_cxx
def test_compile_mode_reaches_torch_compile(model, prompts, stop_token, monkeypatch):
    modes = []
    real = torch.compile

    def spy(fn, **kwargs):
        modes.append(kwargs.get("mode"))
        return real(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    torch._dynamo.reset()
    gen = fast_gen(compile=True, compile_prefill=True, compile_mode="max-autotune-no-cudagraphs")
    out = gen.generate(model, prompts, GREEDY, eos_token_ids=[stop_token], pad_token_id=PAD)
    assert out == naive_greedy(model, prompts, 16, eos=[stop_token])
    assert modes == ["max-autotune-no-cudagraphs"] * 2  # the step and the prompt pass
    torch._dynamo.reset()
