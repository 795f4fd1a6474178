"""Templating and label masks: exactly the assistant text plus EOS is supervised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medlora import ClinicalDataset, DatasetError
from medlora.data import IGNORE_INDEX, collate, render, tokenize_batch, tokenize_messages
from medlora.data._tokenize import render_fast

CHAT = [
    {"role": "system", "content": "You are a careful clinical assistant."},
    {"role": "user", "content": "What does an HbA1c of 8.2% mean?"},
    {"role": "assistant", "content": "Glucose has been above target for months."},
    {"role": "user", "content": "And what should change?"},
    {"role": "assistant", "content": "Review diet, adherence and the metformin dose."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _supervised_runs(ids: tuple[int, ...], labels: tuple[int, ...]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        assert label == ids[i]
        if runs and labels[i - 1] != IGNORE_INDEX:
            runs[-1].append(label)
        else:
            runs.append([label])
    return runs


def test_every_assistant_turn_and_its_eos_is_supervised_and_nothing_else(tokenizer: Any) -> None:
    ex = tokenize_messages(tokenizer, CHAT, max_seq_len=512)
    runs = _supervised_runs(ex.input_ids, ex.labels)
    decoded = [tokenizer.decode(r) for r in runs]
    assert decoded == [
        "Glucose has been above target for months.</s>",
        "Review diet, adherence and the metformin dose.</s>",
    ]
    assert all(r[-1] == tokenizer.eos_token_id for r in runs)


def test_all_tokens_mode_supervises_everything_but_bos(tokenizer: Any) -> None:
    ex = tokenize_messages(tokenizer, CHAT, max_seq_len=512, assistant_only=False)
    assert ex.labels[0] == IGNORE_INDEX and ex.input_ids[0] == tokenizer.bos_token_id
    assert list(ex.labels[1:]) == list(ex.input_ids[1:])


def test_fast_render_is_identical_to_the_jinja_template(tokenizer: Any) -> None:
    assert render_fast(tokenizer, CHAT) == render(tokenizer, CHAT)


def test_padding_equal_to_eos_never_masks_the_eos_labels(tokenizer: Any) -> None:
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the TinyLlama pitfall
    short = tokenize_messages(tokenizer, CHAT[1:3], max_seq_len=512)
    long = tokenize_messages(tokenizer, CHAT, max_seq_len=512)
    batch = collate([short, long], pad_id=tokenizer.pad_token_id)
    row = batch["labels"][0]
    n = len(short)
    assert int((row[:n] == tokenizer.eos_token_id).sum()) == 1  # the reply's </s> kept
    assert bool((row[n:] == IGNORE_INDEX).all())  # padding (also </s>) masked
    assert bool((batch["input_ids"][0, n:] == tokenizer.eos_token_id).all())
    assert int(batch["attention_mask"][0].sum()) == n


def test_truncation_right_flags_and_drop_leaves_out(tokenizer: Any) -> None:
    ds = ClinicalDataset.from_records([{"messages": CHAT}, {"question": "Q?", "answer": "A."}])
    cap = len(tokenize_messages(tokenizer, CHAT, max_seq_len=512)) - 3
    right = ds.prepare(tokenizer, max_seq_len=cap)
    assert right.truncated == 1 and right.dropped == 0 and len(right.examples[0]) == cap
    dropped = ds.prepare(tokenizer, max_seq_len=cap, truncation="drop")
    assert dropped.truncated == 0 and dropped.dropped == 1 and len(dropped.examples) == 1
    assert len(ds.tokenize(tokenizer, max_seq_len=cap, truncation="drop")) == 1


def test_fast_label_path_equals_the_offset_reference_on_every_record(tokenizer: Any) -> None:
    from medlora.data._chat import chat_format
    from medlora.data._tokenize import _labels, _prepare_text

    conversations = [r.messages for r in ClinicalDataset.default()] + [CHAT]
    fast = tokenize_batch(tokenizer, conversations, max_seq_len=4096)
    for messages, example in zip(conversations, fast, strict=True):
        text, spans = _prepare_text(chat_format(tokenizer), messages, True)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert list(example.input_ids) == enc["input_ids"]
        reference = _labels(
            enc["input_ids"], enc["offset_mapping"], spans, bos_id=tokenizer.bos_token_id
        )
        assert list(example.labels) == reference


def test_a_template_error_names_the_file_line_and_record(tmp_path: Path, tokenizer: Any) -> None:
    """Tokenization problems are located the way loading problems are: file and line."""
    import copy

    bad = copy.deepcopy(tokenizer)
    # A template that counts the turns first: no earlier rendering is a prefix of a later one,
    # and it upper-cases contents, so replies cannot be located either way.
    bad.chat_template = (
        "{{ messages|length }}\n{% for m in messages %}<|{{ m.role }}|>{{ m.content|upper }}</s>"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    path = tmp_path / "notes.jsonl"
    lines = [
        json.dumps({"question": "Normal SpO2?", "answer": "95-100%."}),
        "",  # a blank line: the second record sits on file line 3
        json.dumps({"question": "Normal heart rate?", "answer": "60-100/min."}),
    ]
    path.write_text("\n".join(lines) + "\n")
    dataset = ClinicalDataset.from_jsonl(path)
    for call in (dataset.tokenize, dataset.prepare):
        with pytest.raises(DatasetError) as caught:
            call(bad, max_seq_len=128)
        located = [(p.path, p.record_index, p.location, p.field) for p in caught.value.problems]
        assert located == [
            (str(path), 0, "line 1", "messages"),
            (str(path), 2, "line 3", "messages"),
        ]
        assert "cannot be located" in str(caught.value)
