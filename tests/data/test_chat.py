"""Any chat template: the ids a server builds, one BOS only where the model uses one, and each
reply plus the token that ends its turn supervised, located without searching for its text.

Templates (``chat_templates/``, written for these tests in the standard public formats):
Zephyr as TinyLlama-1.1B-Chat ships it (no BOS), ChatML with a default system line (SmolLM2),
Llama-2 ``[INST]`` (``bos_token`` per turn, contents stripped) and Llama-3 headers
(``<|begin_of_text|>`` from the template, contents trimmed, ``<|eot_id|>`` ends a turn).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from medlora import ClinicalDataset, DatasetError
from medlora._hub import load_tokenizer, mark_llama_cpp_compatible
from medlora._template import ZEPHYR_CHAT_TEMPLATE, write_served_chat_template
from medlora.data import IGNORE_INDEX, render, tokenize_batch, tokenize_messages

TEMPLATES = Path(__file__).parent / "chat_templates"
BOS = "{{ bos_token }}"
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]

CONVERSATIONS = {
    "one letter": [
        {"role": "system", "content": "You are a careful clinical assistant."},
        {"role": "user", "content": "s"},
        {"role": "assistant", "content": "s"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "a"},
    ],
    "role names": [
        {"role": "user", "content": "Who speaks next?"},
        {"role": "assistant", "content": "user"},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "assistant"},
        {"role": "user", "content": "And first?"},
        {"role": "assistant", "content": "system"},
    ],
    "special-token text": [
        {"role": "user", "content": "Write the end marker."},
        {"role": "assistant", "content": "</s>"},
        {"role": "user", "content": "<|im_end|>"},
        {"role": "assistant", "content": "<|im_end|>"},
    ],
    "repeats the user": [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "Is an HbA1c of 8.2% high?"},
        {"role": "assistant", "content": "Is an HbA1c of 8.2% high? Yes, above target."},
        {"role": "user", "content": "high"},
        {"role": "assistant", "content": " high \n"},  # Llama-2/-3 strip it: the prefix path
    ],
}


def _template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def _reply_zephyr(reply: str, tok: Any) -> str:
    return reply + tok.eos_token


def _reply_chatml(reply: str, tok: Any) -> str:
    return reply + "<|im_end|>"


def _reply_llama2(reply: str, tok: Any) -> str:
    return " " + reply.strip() + " " + tok.eos_token


def _reply_llama3(reply: str, tok: Any) -> str:
    return reply.strip() + "<|eot_id|>"


def _llama_cpp_vocab(name: str, request: pytest.FixtureRequest) -> Path:
    """A vocab-only GGUF of llama.cpp's (``ggml-vocab-NAME.gguf``) from ``../shared``, else from
    the llama-cpp-python sdist (the session's ``sdist_dir`` fixture downloads it once, and skips
    when the registry cannot be reached)."""
    shared = Path(__file__).resolve().parents[2].parent / "shared/data/llama-spm-vocab"
    if (shared / f"ggml-vocab-{name}.gguf").is_file():
        return shared / f"ggml-vocab-{name}.gguf"
    from medlora.testing._sdist import VOCAB_MODELS

    vocab = request.getfixturevalue("sdist_dir") / VOCAB_MODELS / f"ggml-vocab-{name}.gguf"
    if not vocab.is_file():
        pytest.skip(f"{vocab} is not in this llama-cpp-python sdist")
    return vocab


@pytest.fixture(scope="module")
def tinyllama_tokenizer(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Any:
    """TinyLlama's exact 32,000-token SentencePiece tokenizer, rebuilt from llama.cpp's vocab."""
    from transformers import AutoTokenizer

    from medlora.testing import tokenizer_from_gguf_vocab

    vocab = _llama_cpp_vocab("llama-spm", request)
    out = tokenizer_from_gguf_vocab(vocab, tmp_path_factory.mktemp("tinyllama-tok"))
    AutoTokenizer.from_pretrained(out).save_pretrained(out)
    mark_llama_cpp_compatible(out)
    (out / "chat_template.jinja").unlink()  # TinyLlama's base model: no template
    return load_tokenizer(out)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's 1,024-token SentencePiece tokenizer (always available)."""
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def llama3_tokenizer(request: pytest.FixtureRequest) -> Any:
    """The Llama-3 tokenizer (128,256 tokens) from llama.cpp's vocab; converting it takes a
    minute, so the result is kept in the temporary directory across runs."""
    from transformers import AutoTokenizer

    vocab = _llama_cpp_vocab("llama-bpe", request)
    cache = Path(tempfile.gettempdir()) / "medlora-test-cache" / f"llama3-{vocab.stat().st_size}"
    if not (cache / "tokenizer.json").is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".llama3-", dir=cache.parent))
        AutoTokenizer.from_pretrained(vocab.parent, gguf_file=vocab.name).save_pretrained(staging)
        try:
            staging.replace(cache)
        except OSError:  # another run finished first
            shutil.rmtree(staging, ignore_errors=True)
    return AutoTokenizer.from_pretrained(cache)


@pytest.fixture(scope="module")
def smollm2_tokenizer(real_model_dir: Path) -> Any:
    """The real SmolLM2-135M-Instruct tokenizer (the session's real-model fixture, which builds
    it once and skips when the registry cannot be reached)."""
    return load_tokenizer(real_model_dir)


def _with_chatml_tokens(tok: Any, *, smol_like: bool) -> Any:
    """``tok`` with ChatML's special tokens; ``smol_like``: SmolLM2's BOS/EOS, and no BOS added."""
    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
    if smol_like:
        tok.add_bos_token = False
        tok.bos_token, tok.eos_token = CHATML_TOKENS
    return tok


def _adding_bos(tok: Any) -> Any:
    tok = copy.deepcopy(tok)
    tok.add_bos_token = True  # as the hub's Llama-3 tokenizer does (the GGUF one does not)
    return tok


class Case(NamedTuple):
    fixture: str
    """The tokenizer fixture."""
    prepare: Callable[[Any], Any]
    """Returns a copy of it, changed as the case needs."""
    template: str | None
    """Its chat template (a file in ``chat_templates/``), None for its own or the default."""
    served: Callable[[str], str]
    """The template servers must get, from the training template."""
    reply: Callable[[str, Any], str]
    """The text supervised for one reply: the reply as rendered and its turn's end."""


CASES = {
    "zephyr default, tiny": Case(
        "tiny_tokenizer", copy.deepcopy, None, lambda t: ZEPHYR_CHAT_TEMPLATE, _reply_zephyr
    ),
    "zephyr default, TinyLlama": Case(
        "tinyllama_tokenizer", copy.deepcopy, None, lambda t: ZEPHYR_CHAT_TEMPLATE, _reply_zephyr
    ),
    "zephyr as TinyLlama-Chat ships it": Case(
        "tinyllama_tokenizer", copy.deepcopy, "zephyr", lambda t: BOS + t, _reply_zephyr
    ),
    "chatml, SmolLM2": Case("smollm2_tokenizer", copy.deepcopy, None, str, _reply_chatml),
    "chatml, tiny adding no BOS (SmolLM2-like)": Case(
        "tiny_tokenizer", partial(_with_chatml_tokens, smol_like=True), "chatml", str, _reply_chatml
    ),
    "chatml, tiny adding <s>": Case(
        "tiny_tokenizer",
        partial(_with_chatml_tokens, smol_like=False),
        "chatml",
        lambda t: BOS + t,
        _reply_chatml,
    ),
    "llama-2, tiny": Case("tiny_tokenizer", copy.deepcopy, "llama2", str, _reply_llama2),
    "llama-2, TinyLlama": Case("tinyllama_tokenizer", copy.deepcopy, "llama2", str, _reply_llama2),
    "llama-3": Case("llama3_tokenizer", copy.deepcopy, "llama3", str, _reply_llama3),
    "llama-3, tokenizer adding BOS": Case(
        "llama3_tokenizer", _adding_bos, "llama3", str, _reply_llama3
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[Any, str, Callable[[str, Any], str]]:
    """A tokenizer carrying the case's template, the template servers must get, and the
    supervised text of a reply."""
    fixture, prepare, template, served, reply = CASES[request.param]
    tok = prepare(request.getfixturevalue(fixture))
    if template is not None:
        tok.chat_template = _template(template)
    return tok, served(tok.chat_template or ZEPHYR_CHAT_TEMPLATE), reply


def _supervised_texts(tok: Any, ids: tuple[int, ...], labels: tuple[int, ...]) -> list[str]:
    """The text of each run of supervised tokens, decoded in context (so a leading space of a
    SentencePiece token is kept)."""
    runs: list[list[int]] = []
    for k, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        assert label == ids[k]
        if runs and runs[-1][1] == k:
            runs[-1][1] = k + 1
        else:
            runs.append([k, k + 1])
    text = [tok.decode(list(ids[:k])) for k in range(len(ids) + 1)]
    return [text[e][len(text[s]) :] for s, e in runs]


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_exactly_each_reply_and_its_turn_end_is_supervised(case: Any, name: str) -> None:
    tok, _, reply = case
    messages = CONVERSATIONS[name]
    ex = tokenize_messages(tok, messages, max_seq_len=1024)
    expected = [reply(m["content"], tok) for m in messages if m["role"] == "assistant"]
    assert _supervised_texts(tok, ex.input_ids, ex.labels) == expected


def test_ids_are_what_a_server_builds_from_the_served_template(case: Any) -> None:
    """vLLM's chat endpoint and llama-cpp-python render the served template and tokenize
    with ``add_special_tokens=False``; medlora's ``render`` + ``tokenizer(...)`` agrees too."""
    tok, served, _ = case
    conversations = list(CONVERSATIONS.values())
    examples = tokenize_batch(tok, conversations, max_seq_len=1024)
    for messages, ex in zip(conversations, examples, strict=True):
        text = tok.apply_chat_template(messages, chat_template=served, tokenize=False)
        assert list(ex.input_ids) == tok(text, add_special_tokens=False)["input_ids"]
        assert list(ex.input_ids) == tok(render(tok, messages))["input_ids"]
        prompt = tok.apply_chat_template(
            messages[:2], chat_template=served, tokenize=False, add_generation_prompt=True
        )
        ours = tok(render(tok, messages[:2], generation_prompt=True))["input_ids"]
        assert ours == tok(prompt, add_special_tokens=False)["input_ids"]


def test_one_bos_where_the_model_uses_one_and_none_added_where_it_does_not(case: Any) -> None:
    tok, _, _ = case
    messages = CONVERSATIONS["one letter"]
    ids = tokenize_messages(tok, messages, max_seq_len=1024).input_ids
    if tok.bos_token != "<|im_start|>":  # TinyLlama, Llama-2, Llama-3, ChatML on <s>
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
        return
    # SmolLM2: its "BOS" is ChatML's turn marker and its tokenizer adds none; nothing is
    # stripped or added: one <|im_start|> per turn, the first one included.
    assert render(tok, messages).startswith("<|im_start|>system\n")
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert list(ids).count(tok.bos_token_id) == len(messages)


def _saved_template(directory: Path) -> str:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    return str(config["chat_template"])


def test_the_exported_template_gains_bos_only_when_the_tokenizer_adds_it(
    case: Any, tmp_path: Path
) -> None:
    tok, served, _ = case
    tok.save_pretrained(tmp_path)
    write_served_chat_template(tmp_path, load_tokenizer(tmp_path))
    assert _saved_template(tmp_path) == served


def test_serving_a_served_template_changes_nothing(case: Any) -> None:
    """An adapter's tokenizer already carries the served template; exporting it again (or
    training on it) must not add a second BOS."""
    from medlora._template import served_chat_template

    tok, served, _ = case
    assert served_chat_template(tok) == served
    assert served_chat_template(tok, served) == served


HIDES_REPLIES = (
    "{% for m in messages %}<{{ m['role'] }}>"
    "{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{{ eos_token }}{% endfor %}"
)


def test_a_template_that_drops_replies_names_the_record(tiny_tokenizer: Any) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = HIDES_REPLIES
    records = [
        {"text": "A raw note, no template."},
        {"question": "Normal adult temperature?", "answer": "About 37 C."},
    ]
    with pytest.raises(DatasetError) as info:
        ClinicalDataset.from_records(records).prepare(tok, max_seq_len=256)
    assert [(p.record_index, p.field) for p in info.value.problems] == [(1, "messages")]
    assert isinstance(info.value, ValueError)


def test_generation_stops_on_eos_and_on_the_token_that_ends_a_reply(case: Any) -> None:
    """What training supervises as a reply's end is what generation (generation_config,
    Modelfile, ``medlora.load``) stops on; EOS stays first."""
    from medlora.data import stop_token_ids, stop_tokens

    tok, _, reply = case
    end = reply("", tok).strip()
    stops = stop_tokens(tok)
    assert stops[0] == tok.eos_token
    assert set(stops) == {tok.eos_token, end}
    assert stop_token_ids(tok) == list(dict.fromkeys(tok.convert_tokens_to_ids(list(stops))))


def test_a_template_that_ends_replies_with_no_special_token_has_no_reply_end(
    tiny_tokenizer: Any,
) -> None:
    from medlora.data import reply_end_token, stop_tokens

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert reply_end_token(tok) is None
    assert stop_tokens(tok) == (tok.eos_token,)
