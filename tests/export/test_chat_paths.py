"""One BOS on every path that serves a chat: medlora, vLLM's chat endpoint, llama.cpp; none
added for a model whose tokenizer adds none (ChatML, SmolLM2-style)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from medlora._hub import copy_tokenizer_files, load_tokenizer
from medlora._template import (
    ZEPHYR_CHAT_TEMPLATE,
    served_chat_template,
    strip_leading_bos,
    write_served_chat_template,
)
from medlora.data import render
from medlora.data._tokenize import encode_chat
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
    write_served_chat_template(inline, load_tokenizer(inline))
    saved = json.loads((inline / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == "{{ bos_token }}" + NO_BOS
    assert not (inline / "chat_template.jinja").exists()


def test_the_export_checks_the_chat_handler_ids(exported: Any) -> None:
    assert exported.parity["chat_path"] == {"matching": 8, "total": 8, "mismatched": []}


CHATML = (Path(__file__).parents[1] / "data/chat_templates/chatml.jinja").read_text()
"""ChatML with a default system line, as SmolLM2 ships it."""


@pytest.fixture(scope="module")
def chatml_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A random tiny model whose tokenizer is SmolLM2-like: ChatML template, BOS
    ``<|im_start|>``, EOS ``<|im_end|>``, no BOS added on encode; its merged directory's files
    as the exporter writes them, and its F16 GGUF beside them."""
    from medlora.export._gguf import write_gguf
    from medlora.testing import TINY, make_tiny_llama

    root = tmp_path_factory.mktemp("chatml")
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_bos_token = False
    tokenizer.bos_token, tokenizer.eos_token = "<|im_start|>", "<|im_end|>"
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "tokenizer/tokenizer.model").write_bytes(
        (tiny_model_dir / "tokenizer.model").read_bytes()
    )
    spec = attrs.evolve(TINY, vocab_size=TINY.vocab_size + 32)
    model_dir = make_tiny_llama(root / "model", spec=spec, tokenizer_dir=root / "tokenizer")
    write_served_chat_template(model_dir, load_tokenizer(model_dir))
    return write_gguf(model_dir, model_dir / "chatml-F16.gguf", outtype="F16")


def test_chatml_without_bos_agrees_on_every_chat_path(chatml_gguf: Path) -> None:
    """No BOS added anywhere and the first ``<|im_start|>`` kept: training ids, vLLM's (the
    served template, ``add_special_tokens=False``), llama-cpp-python's chat handler and
    medlora's own GGUF chat path all build the same prompt ids."""
    from medlora.export import open_gguf
    from medlora.export._parity import chat_path_report, chat_template_problems, probe_ids
    from medlora.serve._load import GGUFModel

    model_dir = chatml_gguf.parent
    tokenizer = load_tokenizer(model_dir)
    assert tokenizer.chat_template == CHATML  # served unchanged: no {{ bos_token }} added
    expected = probe_ids(tokenizer, 8)
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    for conversation, ids in zip(probe_conversations(8), expected, strict=True):
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
        assert ids[0] == start and ids.count(start) == len(conversation) + 1
    assert chat_path_report(chatml_gguf, tokenizer, expected)["matching"] == 8
    assert chat_template_problems(chatml_gguf, tokenizer) == []
    model = GGUFModel(llm=open_gguf(chatml_gguf, n_ctx=256, vocab_only=True), path=chatml_gguf)
    try:
        for conversation, ids in zip(probe_conversations(8), expected, strict=True):
            prompt = model.render(conversation, generation_prompt=True)
            assert prompt.startswith("<|im_start|>system\n")
            assert (
                model.tokenize(prompt)
                == ids
                == encode_chat(tokenizer, conversation, generation_prompt=True)
            )
    finally:
        model.llm.close()
