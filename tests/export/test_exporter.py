"""AdapterExporter: every artefact reloads and behaves like the trained model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from medlora import AdapterExporter, ExportConfig, ExportError
from medlora.export._parity import compare, hf_logits, probe_ids


def test_export_layout(exported: Any) -> None:
    out = exported.out_dir
    for name in ("README.md", "parity.json", "medlora.json", "gguf/Modelfile"):
        assert (out / name).is_file(), name
    merged = exported.merged_dir
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == "float16"
    for name in (
        "model.safetensors",
        "tokenizer.model",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        assert (merged / name).is_file(), name
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    generation = json.loads((merged / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    assert set(exported.gguf_files) == {"F16", "Q8_0", "Q4_K_M"}
    assert not list(out.parent.glob(".*partial*"))


def test_merged_reloads_and_matches_the_trained_model(exported: Any, trained_run: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medlora.export._merge import load_trained
    from medlora.training import QuantizationConfig

    tokenizer = AutoTokenizer.from_pretrained(exported.merged_dir)
    ids = probe_ids(tokenizer)
    trained = hf_logits(
        load_trained(trained_run.base_model, trained_run.adapter_dir, QuantizationConfig()), ids
    )
    merged = AutoModelForCausalLM.from_pretrained(exported.merged_dir, dtype=torch.float32)
    agreement = compare(trained, hf_logits(merged, ids))
    # Measured: max |logit diff| 0.035 (fp16 storage of the merged weights), top-1 0.998.
    assert agreement.max_abs_logit_diff < 6e-2, agreement
    assert agreement.top1 >= 0.995, agreement
    assert agreement.top1_last == 1.0


def test_both_merge_strategies_are_measured(exported: Any) -> None:
    merge = exported.parity["merge"]
    assert set(merge) == {"original", "nf4-roundtrip"}
    chosen = exported.merge_strategy
    assert merge[chosen]["mean_kl"] == min(m["mean_kl"] for m in merge.values())
    # The adapter was trained against dequant(NF4(W)): merging into that copy reproduces the
    # trained model (KL ~1e-12), merging into the original weights does not (KL ~1e-3).
    assert chosen == "nf4-roundtrip"
    assert merge["nf4-roundtrip"]["mean_kl"] < merge["original"]["mean_kl"] / 100


def test_f16_gguf_next_token_matches_hf_on_probes(exported: Any) -> None:
    row = exported.parity["artefacts"]["gguf F16"]
    assert row["positions"] > 20 * 10
    assert row["top1_last"] == 1.0  # all 24 probe prompts
    assert row["top1"] >= 0.99
    assert row["max_abs_logit_diff"] < 5e-2


def test_quantized_ggufs_load_and_generate(exported: Any) -> None:
    from medlora.export import open_gguf

    assert exported.parity["artefacts"]["gguf Q8_0"]["top1"] >= 0.95
    llm = open_gguf(exported.gguf_files["Q4_K_M"], n_ctx=512)
    try:
        reply = llm.create_chat_completion(
            messages=[{"role": "user", "content": "What are the signs of pneumonia?"}],
            max_tokens=16,
            temperature=0.0,
        )
    finally:
        llm.close()
    assert reply["choices"][0]["message"]["content"].strip()
    assert exported.gguf_files["Q4_K_M"].stat().st_size < exported.gguf_files["F16"].stat().st_size


def test_model_card_and_modelfile(exported: Any) -> None:
    card = (exported.out_dir / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0")
    assert "Not a medical device" in card
    assert "gguf Q4_K_M" in card and "merged (nf4-roundtrip)" in card
    modelfile = (exported.out_dir / "gguf/Modelfile").read_text()
    assert modelfile.startswith("FROM ./clinical-tiny-Q4_K_M.gguf")
    assert 'PARAMETER stop "</s>"' in modelfile


def test_failed_parity_raises_and_keeps_the_previous_export(
    trained_run: Any, tmp_path: Path
) -> None:
    out = tmp_path / "exp"
    AdapterExporter(trained_run, ExportConfig(formats=("adapter",))).export(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    impossible = ExportConfig(gguf_types=("Q4_K_M",), min_agreement={"Q4_K_M": 1.01})
    with pytest.raises(ExportError, match="Q4_K_M top-1 agreement") as info:
        AdapterExporter(trained_run, impossible).export(out)
    assert "gguf Q4_K_M" in info.value.measurements["artefacts"]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]


def test_non_strict_parity_warns_and_keeps_the_export(trained_run: Any, tmp_path: Path) -> None:
    lenient = ExportConfig(
        gguf_types=("Q4_K_M",), min_agreement={"Q4_K_M": 1.01}, strict=False, formats=("gguf",)
    )
    with pytest.warns(UserWarning, match="parity check failed"):
        result = AdapterExporter(trained_run, lenient).export(tmp_path / "exp")
    assert result.merged_dir is None and result.adapter_dir is None
    assert result.gguf_files["Q4_K_M"].is_file()


def test_interrupted_export_leaves_no_final_directory(
    trained_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medlora.export._exporter as exporter

    def killed(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "write_gguf", killed)
    with pytest.raises(KeyboardInterrupt):
        AdapterExporter(trained_run).export(tmp_path / "exp")
    assert os.listdir(tmp_path) == []


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not a finished medlora training run"):
        AdapterExporter(tmp_path).export(tmp_path / "out")
