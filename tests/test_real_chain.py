"""The whole chain on a real pretrained checkpoint, SmolLM2-135M-Instruct (byte-level BPE,
tied embeddings, ChatML, no BOS): train, export every format, and check that HF, vLLM-style
rendering and llama.cpp all see the same ids and that the results answer sensibly.

About 3-5 minutes on two CPU cores; runs with ``--run-slow`` (``make test``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def real_export(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from medlora import AdapterExporter, ClinicalDataset, ExportConfig, QLoRATrainer, TrainingConfig

    run = tmp_path_factory.mktemp("real-run")
    config = TrainingConfig(
        model=str(real_model_dir),
        output_dir=run,
        max_steps=6,
        micro_batch_size=2,
        learning_rate=5e-4,
        warmup_steps=1,
        max_seq_len=256,
        validation_fraction=0.03,
        seed=0,
    )
    data = ClinicalDataset.default()
    result = QLoRATrainer(config, train_dataset=data).train(progress=False)
    export = ExportConfig(gguf_types=("F16", "Q4_K_M"))
    return result, AdapterExporter(result, export).export(run / "export")


def test_training_sees_the_first_im_start(real_export: Any) -> None:
    result, _ = real_export
    from medlora._hub import load_tokenizer
    from medlora.data import render
    from medlora.data._tokenize import encode_chat

    tokenizer = load_tokenizer(result.adapter_dir)
    messages = [{"role": "user", "content": "BP 150/95, what next?"}]
    text = render(tokenizer, messages, generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    ids = encode_chat(tokenizer, messages, generation_prompt=True)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and ids[1] != ids[0]
    assert result.final_eval_loss < result.initial_eval_loss


def test_every_serving_path_gets_the_training_ids(real_export: Any) -> None:
    """vLLM's chat endpoint renders the exported template and tokenizes with no special
    tokens; llama.cpp's chat handler was checked by the export itself."""
    from transformers import AutoTokenizer

    from medlora.data._tokenize import encode_chat
    from medlora.export._parity import probe_conversations

    _, exported = real_export
    served = AutoTokenizer.from_pretrained(exported.merged_dir)
    for conversation in probe_conversations(6):
        text = served.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        vllm_ids = served(text, add_special_tokens=False)["input_ids"]
        assert vllm_ids == encode_chat(served, conversation, generation_prompt=True)
    chat_path = exported.parity["chat_path"]
    assert chat_path["matching"] == chat_path["total"] > 0
    assert exported.parity["vllm"] == {"adapter": [], "merged": []}


def test_gguf_files_are_faithful_and_stop(real_export: Any) -> None:
    _, exported = real_export
    f16 = exported.agreements["gguf F16"]
    assert f16.ppl_ratio is not None and abs(f16.ppl_ratio - 1.0) < 0.01
    q4 = exported.agreements["gguf Q4_K_M"]
    assert q4.ppl_ratio is not None and q4.ppl_ratio < 1.3
    from medlora.export import open_gguf

    llm = open_gguf(exported.gguf_files["Q4_K_M"], n_ctx=1024)
    try:
        reply = llm.create_chat_completion(
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=48,
            temperature=0.0,
        )
    finally:
        llm.close()
    choice = reply["choices"][0]
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"  # stopped at <|im_end|>, not at max_tokens


def test_merged_directory_answers_in_plain_transformers(real_export: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, exported = real_export
    config = json.loads((exported.merged_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    tokenizer = AutoTokenizer.from_pretrained(exported.merged_dir)
    model = AutoModelForCausalLM.from_pretrained(exported.merged_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=False)
    assert "Paris" in reply and "<|im_end|>" in reply
