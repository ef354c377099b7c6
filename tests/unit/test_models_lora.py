"""apply_lora: targets per architecture, seeded init, exact no-op at init, full fine-tuning."""

import pytest
import torch
from torch import nn

from unisd.config.schema import ModelConfig
from unisd.models import (apply_lora, count_parameters, enable_gradient_checkpointing, is_lora, lora_targets,
                          tiny_model, trainable_parameters)


def _ids():
    return torch.tensor([[1, 2, 3, 4, 5, 6]])


@pytest.mark.parametrize("arch,expected", [
    ("llama", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ("qwen2", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ("gpt2", ["c_attn", "c_proj", "c_fc"]),
])
def test_targets_per_architecture(arch, expected):
    model, _ = tiny_model(arch)
    assert lora_targets(model) == expected
    peft_model = apply_lora(model, ModelConfig(lora_r=4, lora_alpha=8))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1]
               for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert adapted == set(expected)


def test_fallback_targets_every_linear_but_the_head():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.mix = nn.Linear(8, 8)
            self.ff = nn.Sequential(nn.Linear(8, 8))
            self.head = nn.Linear(8, 10)

        def get_output_embeddings(self):
            return self.head

    assert lora_targets(Toy()) == ["0", "mix"]


def test_only_adapter_trainable_and_init_is_noop():
    model, _ = tiny_model()
    with torch.no_grad():
        ref = model(input_ids=_ids()).logits
    n_base = sum(p.numel() for p in model.parameters())
    peft_model = apply_lora(model, ModelConfig(lora_r=4, lora_alpha=8))
    assert is_lora(peft_model)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    trainable, total = count_parameters(peft_model)
    assert trainable == sum(p.numel() for p in trainable_parameters(peft_model))
    assert total == n_base + trainable
    with torch.no_grad():
        assert torch.equal(peft_model(input_ids=_ids()).logits, ref)


def test_lora_init_is_seeded_and_leaves_global_rng_alone():
    def adapter(seed):
        model, _ = tiny_model()
        peft_model = apply_lora(model, ModelConfig(lora_r=4), seed=seed)
        return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_A" in n}

    torch.manual_seed(0)
    expected_next = torch.rand(2)
    torch.manual_seed(0)
    a = adapter(1)
    assert torch.equal(torch.rand(2), expected_next)
    b, c = adapter(1), adapter(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_explicit_targets_and_full_finetune():
    model, _ = tiny_model()
    peft_model = apply_lora(model, ModelConfig(lora_targets=["q_proj"]))
    assert {n.split(".lora_A")[0].rsplit(".", 1)[-1]
            for n, _ in peft_model.named_parameters() if "lora_A" in n} == {"q_proj"}
    model, _ = tiny_model()
    model.requires_grad_(False)
    full = apply_lora(model, ModelConfig(finetune="full"))
    assert full is model and not is_lora(full)
    assert count_parameters(full)[0] == count_parameters(full)[1]


def test_lora_trains_with_gradient_checkpointing_and_bf16_base():
    model, _ = tiny_model(dtype=torch.bfloat16)
    enable_gradient_checkpointing(model)
    peft_model = apply_lora(model, ModelConfig(lora_r=4))
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    assert all(p.dtype == torch.float32 for p in lora)  # peft keeps adapters in fp32 over a bf16 base
    peft_model.train()
    peft_model(input_ids=_ids(), labels=_ids()).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
