"""save_weights / load_weights round trips and export_merged -> plain transformers folder."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unisd.config.schema import ModelConfig
from unisd.models import (TeacherWeights, apply_lora, export_merged, load_weights, save_weights, tiny_model,
                          trainable_parameters)

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])


def _logits(module):
    with torch.no_grad():
        return module(input_ids=IDS).logits


def _trained(finetune, steps=3, base_dir=None):
    model, tok = tiny_model(init_std=0.2)
    if base_dir is not None:
        model.save_pretrained(base_dir)
        tok.save_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir)  # config._name_or_path = base_dir
    model = apply_lora(model, ModelConfig(finetune=finetune, lora_r=4, lora_alpha=8))
    opt = torch.optim.AdamW(trainable_parameters(model), lr=5e-2)
    model.train()
    for _ in range(steps):
        model(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok


def test_export_merged_lora_loads_without_peft(tmp_path):
    model, tok = _trained("lora")
    TeacherWeights(model, "ema", finetune="lora")  # a second adapter must not leak into the export
    expected = _logits(model)
    out = export_merged(model, tmp_path / "merged", tokenizer=tok)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert not any("lora" in k for k in plain.state_dict())
    torch.testing.assert_close(_logits(plain.eval()), expected, rtol=0, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out).decode(tok("hi").input_ids) == "hi"
    # the trained model is untouched: still LoRA, both adapters there, same output
    assert set(model.peft_config) == {"default", "ema"}
    assert torch.equal(_logits(model), expected)
    assert not list(tmp_path.glob(".merged.*"))  # no temporary folder left behind
    with pytest.raises(FileExistsError):
        export_merged(model, out, tokenizer=tok)


def test_export_merged_with_dtype_and_full_model(tmp_path):
    model, tok = _trained("full")
    expected = _logits(model)
    out = export_merged(model, tmp_path / "bf16", tokenizer=tok, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.float32  # source not cast in place
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.dtype == torch.bfloat16
    assert (_logits(plain.float().eval()) - expected).abs().max() < 0.05


def test_save_and_load_lora_weights(tmp_path):
    model, _ = _trained("lora")
    TeacherWeights(model, "ema", finetune="lora")
    save_weights(model, tmp_path / "ckpt", base="some-base", step=3)
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "unisd_weights.json"} <= files
    assert not (tmp_path / "ckpt" / "ema").exists()  # only the student adapter
    meta = json.loads((tmp_path / "ckpt" / "unisd_weights.json").read_text())
    assert meta == {"kind": "lora", "base": "some-base", "step": 3, "dtype": "float32"}

    fresh, _ = tiny_model(init_std=0.2)
    fresh = apply_lora(fresh, ModelConfig(lora_r=4, lora_alpha=8), seed=99)
    assert not torch.allclose(_logits(fresh.eval()), _logits(model))
    load_weights(fresh, tmp_path / "ckpt")
    assert torch.equal(_logits(fresh.eval()), _logits(model))
    assert [n for n, p in fresh.named_parameters() if p.requires_grad] == \
        [n for n, p in model.named_parameters() if p.requires_grad and ".ema." not in n]


def test_save_and_load_full_weights(tmp_path):
    model, _ = _trained("full")
    save_weights(model, tmp_path / "ckpt", step=1)
    fresh, _ = tiny_model(init_std=0.2, seed=5)
    load_weights(fresh, tmp_path / "ckpt")
    assert torch.equal(_logits(fresh), _logits(model))
    assert fresh.get_input_embeddings().weight is fresh.get_output_embeddings().weight
    lora, _ = tiny_model()
    lora = apply_lora(lora, ModelConfig(lora_r=4))
    with pytest.raises(ValueError, match="no LoRA adapter"):
        load_weights(lora, tmp_path / "ckpt")


def test_export_from_checkpoint_folders(tmp_path):
    model, _ = _trained("lora", base_dir=tmp_path / "base")
    expected = _logits(model)
    run = tmp_path / "run"
    save_weights(model, run / "checkpoints" / "step-1", step=1)  # base recorded from _name_or_path
    model2, _ = _trained("lora", steps=5, base_dir=tmp_path / "base")
    save_weights(model2, run / "checkpoints" / "step-5", step=5)
    out = export_merged(tmp_path / "run", tmp_path / "merged")  # picks the highest step
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(_logits(plain), _logits(model2), rtol=0, atol=1e-5)
    out1 = export_merged(run / "checkpoints" / "step-1", tmp_path / "merged1")
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(out1).eval()), expected,
                               rtol=0, atol=1e-5)
    assert (out1 / "tokenizer.json").is_file()
