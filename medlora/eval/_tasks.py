"""Evaluation items from records: multiple choice (MedQA, MedMCQA, PubMedQA layouts),
generation (the last assistant turn of a conversation), and the public files they come in
(PubMedQA, MedSafetyBench)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from medlora._errors import DatasetError, DatasetProblem
from medlora.data import ClinicalRecord, LoadOptions, validate_row

LETTERS = "ABCDEFGHIJ"
PUBMEDQA_CHOICES = ("yes", "no", "maybe")
_CHOICE_KEYS = ("options", "opa", "final_decision", "answer_idx")


@attrs.frozen(kw_only=True)
class ChoiceItem:
    """One multiple-choice question."""

    id: str
    """Record id."""
    question: str
    """The question (with its abstract for PubMedQA)."""
    options: tuple[tuple[str, str], ...]
    """``(letter, text)`` pairs; PubMedQA's are ``("yes", "yes")`` ...."""
    answer: int
    """Index of the correct option."""
    task: str
    """``multiple_choice`` (MedQA/MedMCQA layout) or ``pubmedqa``."""
    messages: tuple[Mapping[str, str], ...] = ()
    """The prompt as chat turns (system + user), when the record has them."""

    def plain_prompt(self) -> str:
        """lm-eval's prompt: ``Question: ...\\nA. ...\\nAnswer:`` (PubMedQA: ``Abstract: ...``)."""
        if self.task == "pubmedqa":
            return f"{self.question}\nAnswer:"
        shown = "\n".join(f"{k}. {v}" for k, v in self.options)
        return f"Question: {self.question}\n{shown}\nAnswer:"

    def chat_messages(self) -> list[dict[str, str]]:
        """The prompt as a conversation (the record's own turns, else the plain prompt)."""
        if self.messages:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.plain_prompt()}]

    def rotated(self, shift: int) -> ChoiceItem:
        """The same question with the option texts moved ``shift`` places down the letters.

        The letters stay in place and the texts move (``A. x, B. y, C. z`` shifted by 1 is
        ``A. z, B. x, C. y``), in the prompt as well: the ``A. text`` lines of the record's own
        prompt are rewritten. PubMedQA's options are not shown in its prompt, so it does not
        change.

        Raises:
            DatasetError: The record's prompt does not show its options as one block of
                ``A. text`` lines, so they cannot be moved.
        """
        n = len(self.options)
        shift %= n
        if shift == 0 or self.task == "pubmedqa":
            return self
        texts = [text for _, text in self.options]
        moved = tuple(
            (letter, texts[(i - shift) % n]) for i, (letter, _) in enumerate(self.options)
        )
        return attrs.evolve(
            self,
            options=moved,
            answer=(self.answer + shift) % n,
            messages=self._moved_messages(moved),
        )

    def _moved_messages(self, moved: Sequence[tuple[str, str]]) -> tuple[Mapping[str, str], ...]:
        if not self.messages:
            return ()
        shown = "\n".join(f"{k}. {v}" for k, v in self.options)
        last = self.messages[-1]
        if last.get("role") != "user" or last.get("content", "").count(shown) != 1:
            raise DatasetError(
                [
                    DatasetProblem(
                        f"record {self.id!r}: the prompt does not show the options once as "
                        "'A. text' lines, so they cannot be reordered; score it with "
                        "option_orders=1",
                        field="options",
                    )
                ]
            )
        content = last["content"].replace(shown, "\n".join(f"{k}. {v}" for k, v in moved))
        return (*self.messages[:-1], {**last, "content": content})

    def continuations(self, style: str) -> list[str]:
        """What is scored for each option: ``" " + text`` (plain) or the trained reply form."""
        if self.task == "pubmedqa":  # chat: the trained reply ends "Answer: yes"
            return [(" " if style == "plain" else "Answer: ") + text for _, text in self.options]
        if style == "plain":
            return [f" {text}" for _, text in self.options]
        return [f"{letter}. {text}" for letter, text in self.options]


@attrs.frozen(kw_only=True)
class GenerationItem:
    """One prompt whose reply is compared with a reference."""

    id: str
    """Record id."""
    messages: tuple[Mapping[str, str], ...]
    """The conversation up to the reply."""
    reference: str
    """The reference reply."""


def _prompt_turns(messages: Sequence[Mapping[str, str]]) -> tuple[Mapping[str, str], ...]:
    """The turns before the last assistant reply."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    return tuple(messages[:last]) if last is not None else tuple(messages)


def _choice_item(index: int, record: ClinicalRecord | Mapping[str, Any]) -> ChoiceItem | None:
    """The item of one record, from its validated training view where it has one."""
    if not isinstance(record, ClinicalRecord):
        problems, validated = validate_row(record, index=index, options=LoadOptions())
        if validated is None:
            if problems and any(k in record for k in _CHOICE_KEYS):
                raise DatasetError(problems)
            return None
        record = validated
    if record.kind == "pubmedqa":
        decision = str(record.source.get("final_decision", "")).strip().lower()
        prompt = _prompt_turns(record.messages)
        return ChoiceItem(
            id=record.id,
            question=prompt[-1]["content"],  # "Abstract: ...\nQuestion: ..." as trained
            options=tuple((c, c) for c in PUBMEDQA_CHOICES),
            answer=PUBMEDQA_CHOICES.index(decision),
            task="pubmedqa",
            messages=prompt,
        )
    options = _option_pairs(record.source.get("options"))
    question = record.source.get("question")
    if not options or not isinstance(question, str):
        return None
    if record.kind == "multiple_choice":  # the validated reply "B. text" honours the index base
        reply = record.messages[-1]["content"]  # its letter, as the text may have been redacted
        answer: Any = next((k for k, _ in options if reply.startswith(f"{k}. ")), reply)
    else:  # a conversation that carries its question's fields (the embedded set)
        answer = record.source.get("answer_idx", record.source.get("answer"))
    letters = [k for k, _ in options]
    if answer not in letters:
        raise DatasetError(
            [
                DatasetProblem(
                    f"answer {answer!r} is not one of the options {letters}",
                    record_index=index,
                    field="answer",
                )
            ]
        )
    return ChoiceItem(
        id=record.id,
        question=question,
        options=tuple(options),
        answer=letters.index(answer),
        task="multiple_choice",
        messages=_prompt_turns(record.messages),
    )


def _option_pairs(raw: Any) -> list[tuple[str, str]]:
    """``(letter, text)`` of options given as an object keyed by letter or as a list."""
    if isinstance(raw, Mapping):
        return [(str(k), str(v)) for k, v in raw.items()]
    if isinstance(raw, list | tuple):
        return [(LETTERS[i], str(v)) for i, v in enumerate(raw[: len(LETTERS)])]
    return []


def choice_items(records: Iterable[ClinicalRecord | Mapping[str, Any]]) -> list[ChoiceItem]:
    """Multiple-choice items from every record that has a MedQA, MedMCQA or PubMedQA layout.

    Raw records are validated first (as ``ClinicalDataset.from_records`` does), so an item is
    exactly what training saw: MedQA (``options`` object, ``answer_idx``), MedMCQA
    (``opa``..``ope``, ``cop`` read with the dataset's ``answer_index_base``; raw records
    here: 0-based), options given as a list (lettered A, B, ...), and PubMedQA with the
    training prompt. Other records are skipped.

    Raises:
        DatasetError: A record's answer is not one of its options.
    """
    items = (_choice_item(i, r) for i, r in enumerate(records))
    return [item for item in items if item is not None]


def generation_items(
    records: Iterable[ClinicalRecord],
    *,
    kinds: Sequence[str] = ("summarization", "diagnosis_qa", "qa"),
) -> list[GenerationItem]:
    """Generation items: the last assistant turn of records whose ``task`` (or kind) is in
    ``kinds``, with the turns before it as the prompt."""
    out = []
    for record in records:
        task = record.source.get("task", record.kind)
        if task not in kinds:
            continue
        last = max(i for i, m in enumerate(record.messages) if m["role"] == "assistant")
        out.append(
            GenerationItem(
                id=record.id,
                messages=tuple(record.messages[:last]),
                reference=record.messages[last]["content"],
            )
        )
    return out


def request_items(records: Iterable[ClinicalRecord]) -> list[GenerationItem]:
    """Every record as a request: the turns before its last assistant reply as the prompt, that
    reply (or ``""``) as the reference. The ``refusal`` task asks each of these."""
    items = []
    for record in records:
        prompt = _prompt_turns(record.messages)
        reply = (
            record.messages[len(prompt)]["content"] if len(prompt) < len(record.messages) else ""
        )
        items.append(GenerationItem(id=record.id, messages=prompt, reference=reply))
    return items


def pubmedqa_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from PubMedQA's ``ori_pqal.json`` (one object keyed by PMID)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(
            [DatasetProblem(f"cannot read PubMedQA JSON: {exc}", path=path)]
        ) from exc
    if not isinstance(data, dict):
        raise DatasetError([DatasetProblem("expected one object keyed by PMID", path=path)])
    return [{"id": str(pmid), **row} for pmid, row in data.items() if isinstance(row, dict)]


MEDSAFETYBENCH_COLUMNS = ("harmful_medical_request", "safe_response")


def medsafetybench_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from MedSafetyBench CSV files (columns ``,harmful_medical_request,safe_response``;
    MIT, github.com/krosenfeld-IDM/med-safety-bench).

    Args:
        path: One CSV file, or a directory searched recursively for ``*.csv`` (the release's
            ``gpt4/`` and ``llama2/`` folders of ``..._category_N.csv``).

    Returns:
        One ``qa`` record per row, in file then row order: ``id`` (``<folder>/<file
        stem>/<row>``), ``question`` (the harmful request), ``answer`` (the safe response),
        ``category`` (the number in the file name, or None) and ``generator`` (the folder).

    Raises:
        DatasetError: No CSV file, a missing column, or an empty cell (all problems at once).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError([DatasetProblem("no such file or directory", path=path)])
    files = sorted(path.rglob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DatasetError([DatasetProblem("no MedSafetyBench *.csv file found", path=path)])
    records: list[dict[str, Any]] = []
    problems: list[DatasetProblem] = []
    for file in files:
        try:
            with file.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            problems.append(DatasetProblem(f"cannot read MedSafetyBench CSV: {exc}", path=file))
            continue
        missing = [c for c in MEDSAFETYBENCH_COLUMNS if rows and c not in rows[0]]
        if missing:
            problems.append(DatasetProblem(f"missing columns {missing}", path=file))
            continue
        digits = "".join(ch for ch in file.stem.rsplit("_", 1)[-1] if ch.isdigit())
        for index, row in enumerate(rows):
            cells = {c: str(row.get(c) or "").strip() for c in MEDSAFETYBENCH_COLUMNS}
            empty = [c for c, v in cells.items() if not v]
            for column in empty:
                problems.append(
                    DatasetProblem("empty cell", path=file, record_index=index, field=column)
                )
            if empty:
                continue
            records.append(
                {
                    "id": f"{file.parent.name}/{file.stem}/{row.get('') or index}",
                    "question": cells["harmful_medical_request"],
                    "answer": cells["safe_response"],
                    "category": int(digits) if digits else None,
                    "generator": file.parent.name,
                }
            )
    if problems:
        raise DatasetError(problems, hint="Pass the release's CSV files unchanged.")
    return records
