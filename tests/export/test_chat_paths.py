"""One BOS on every path that serves a chat: medlora, vLLM's chat endpoint, llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medlora._hub import copy_tokenizer_files, load_tokenizer, write_served_chat_template
from medlora._template import ZEPHYR_CHAT_TEMPLATE, served_chat_template, strip_leading_bos
from medlora.data import render
from medlora.export._parity import probe_conversations

NO_BOS = "{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"


def _exported_ids(exported: Any) -> tuple[Any, list[list[int]]]:
    from medlora._hub import load_tokenizer

    tokenizer = load_tokenizer(exported.merged_dir)
    conversations = probe_conversations(4)
    ids = [
        tokenizer(render(tokenizer, c, generation_prompt=True))["input_ids"] for c in conversations
    ]
    return tokenizer, ids


def test_medlora_and_vllm_chat_tokenization_agree_with_one_bos(exported: Any) -> None:
    """vLLM's /v1/chat/completions renders the template and tokenizes with
    add_special_tokens=False (its default): the BOS must come from the template."""
    tokenizer, ids = _exported_ids(exported)
    for seq in ids:
        assert seq[0] == tokenizer.bos_token_id and seq[1] != tokenizer.bos_token_id
    for conversation, expected in zip(probe_conversations(4), ids, strict=True):
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected


def test_llama_cpp_python_chat_path_gets_the_training_ids(exported: Any) -> None:
    """llama-cpp-python's chat handler tokenizes the rendered template without adding BOS
    (``added_special=True``); with the template's own ``{{ bos_token }}`` the ids equal
    training's. Without it the prompt lost its BOS (measured: 62 vs 63 tokens)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from medlora.export import open_gguf

    _, ids = _exported_ids(exported)
    llm = open_gguf(exported.gguf_files["F16"], n_ctx=64, vocab_only=True)
    try:
        formatter = Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>"
        )
        for conversation, expected in zip(probe_conversations(4), ids, strict=True):
            result = formatter(messages=conversation)
            got = llm.tokenize(
                result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
            )
            assert got == expected
    finally:
        llm.close()


def test_served_template_starts_with_bos_only_when_missing(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)  # adds <s> on encode
    assert served_chat_template(tokenizer, NO_BOS) == "{{ bos_token }}" + NO_BOS
    assert served_chat_template(tokenizer, ZEPHYR_CHAT_TEMPLATE) == ZEPHYR_CHAT_TEMPLATE
    llama2 = "{% for m in messages %}{{ bos_token + '[INST] ' + m['content'] }}{% endfor %}"
    assert served_chat_template(tokenizer, llama2) == llama2  # places BOS itself, per turn
    literal = "<s>" + NO_BOS  # writes the BOS text without naming bos_token
    assert served_chat_template(tokenizer, literal) == literal
    assert strip_leading_bos("<s><|user|>", "<s>") == "<|user|>"
    assert strip_leading_bos("<|user|>", "<s>") == "<|user|>"


def test_copied_tokenizer_files_carry_the_served_template(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A tokenizer without any template (TinyLlama's base model): the default is written.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        (bare / name).write_bytes((tiny_model_dir / name).read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    copy_tokenizer_files(bare, out)
    assert (out / "chat_template.jinja").read_text() == ZEPHYR_CHAT_TEMPLATE
    # An inline template without BOS (TinyLlama-1.1B-Chat's layout) gains it in place.
    inline = tmp_path / "inline"
    inline.mkdir()
    for name in ("tokenizer.model", "tokenizer.json"):
        (inline / name).write_bytes((tiny_model_dir / name).read_bytes())
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    (inline / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": NO_BOS}))
    write_served_chat_template(inline)
    saved = json.loads((inline / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == "{{ bos_token }}" + NO_BOS
    assert not (inline / "chat_template.jinja").exists()


def test_the_export_checks_the_chat_handler_ids(exported: Any) -> None:
    assert exported.parity["chat_path"] == {"matching": 8, "total": 8, "mismatched": []}
