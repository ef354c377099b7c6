"""model.compile: compiled decoder layers give the eager gradients, only while active."""

from __future__ import annotations

import shutil

import pytest
import torch

from unisd.config import load_config
from unisd.config.schema import ConfigError
from unisd.models import CompiledLayers, decoder_layers
from unisd.models.tiny import tiny_model

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                                reason="inductor on CPU needs a C++ compiler")


def _loss(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    return logits.log_softmax(-1)[..., 5].mean()


def test_compiled_layers_match_eager_gradients_and_switch_off():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_model("llama", layers=2)[0],
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(3, 200, (3, 17))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    _loss(model, ids, mask).backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = CompiledLayers(model)
    assert len(compiled.layers) == 2 and compiled.layers == decoder_layers(model)
    with compiled.active():
        assert all("forward" in layer.__dict__ for layer in compiled.layers)
        _loss(model, ids, mask).backward()
    assert all("forward" not in layer.__dict__ for layer in compiled.layers)  # eager again outside
    for name, grad in eager.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


def test_compile_needs_layers_and_is_refused_with_fsdp():
    with pytest.raises(ConfigError, match="no decoder layers"):
        CompiledLayers(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="model.compile with distributed.strategy='fsdp'"):
        load_config("sdft", ["model.compile=true", "distributed.strategy=fsdp", "teacher.weights=frozen_base"])
