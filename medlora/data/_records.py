"""Record kinds and their conversion to the one training view: a list of chat messages.

Every supported layout is detected from its keys, checked field by field, and turned into
OpenAI-style ``messages`` (``system``/``user``/``assistant`` turns). Problems are collected,
never raised one at a time, so a user sees every bad record in one error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medlora._errors import DatasetProblem

Message = dict[str, str]

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}

# kind -> the keys that identify it (all must be present), most specific first.
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "multiple_choice": ("question", "options", "answer"),
    "pubmedqa": ("question", "final_decision"),
    "instruction": ("instruction", "output"),
    "summarization": ("note", "summary"),
    "qa": ("question", "answer"),
    "text": ("text",),
}
KINDS = tuple(KIND_KEYS)
"""Record kinds medlora understands, in detection order."""


def detect_kind(record: Mapping[str, Any]) -> str | None:
    """The first kind whose identifying keys all hold a value, else the first whose keys are all
    present (a table has every column in every row, empty cells as None), or None."""
    for kind, keys in KIND_KEYS.items():
        if all(record.get(k) is not None for k in keys):
            return kind
    for kind, keys in KIND_KEYS.items():
        if all(k in record for k in keys):
            return kind
    return None


class _Checker:
    """Collects problems for one record."""

    def __init__(self, record: Mapping[str, Any], index: int, source: str | None) -> None:
        self.record = record
        self.index = index
        self.source = source
        self.problems: list[DatasetProblem] = []

    def fail(self, field: str, message: str) -> None:
        self.problems.append(
            DatasetProblem(message, path=self.source, record_index=self.index, field=field)
        )

    def text(self, field: str, value: Any = None, *, where: str | None = None) -> str:
        value = self.record.get(field) if where is None else value
        name = where or field
        if value is None:
            self.fail(name, "is missing; every record of this kind needs it")
            return ""
        if not isinstance(value, str):
            self.fail(name, f"must be a string, got {type(value).__name__}")
            return ""
        if not value.strip():
            self.fail(name, "is empty; fill it in or drop the record")
            return ""
        return value


def _chat(
    c: _Checker, key: str, role_key: str, text_key: str, roles: Mapping[str, str]
) -> list[Message]:
    turns = c.record.get(key)
    if not isinstance(turns, list) or not turns:
        c.fail(key, "must be a non-empty list of turns")
        return []
    out: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, Mapping):
            c.fail(where, f"must be an object with {role_key!r} and {text_key!r}")
            continue
        role = turn.get(role_key)
        if not isinstance(role, str) or role not in roles:
            c.fail(f"{where}.{role_key}", f"unknown role {role!r}; use one of {sorted(roles)}")
            continue
        content = c.text(text_key, turn.get(text_key), where=f"{where}.{text_key}")
        out.append({"role": roles[role], "content": content})
    if out and not any(m["role"] == "assistant" for m in out):
        c.fail(key, "has no assistant turn, so there is nothing to learn from it")
    if out and out[0]["role"] == "assistant":
        c.fail(f"{key}[0].{role_key}", "the conversation must not open with the assistant")
    return out


def _options(c: _Checker) -> list[tuple[str, str]]:
    raw = c.record.get("options")
    if isinstance(raw, Mapping):
        pairs = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, Sequence) and not isinstance(raw, str):
        pairs = [(chr(ord("A") + i), v) for i, v in enumerate(raw)]
    else:
        c.fail("options", "must be a list of choices or an object keyed by letter")
        return []
    if len(pairs) < 2:
        c.fail("options", "needs at least two choices")
    for key, value in pairs:
        c.text("options", value, where=f"options.{key}")
    return [(k, str(v)) for k, v in pairs]


def _mc_answer(
    c: _Checker, options: list[tuple[str, str]], index_base: int
) -> tuple[str, str] | None:
    answer = c.record.get("answer")
    keys = [k for k, _ in options]
    if isinstance(answer, bool):
        answer = None
    if isinstance(answer, int) and 0 <= answer - index_base < len(options):
        return options[answer - index_base]
    if isinstance(answer, str):
        for key, value in options:
            if answer.strip() in (key, value):
                return key, value
    c.fail(
        "answer",
        f"must be one of the option keys {keys}, a {index_base}-based index or the text "
        f"of an option; got {answer!r}",
    )
    return None


MEDMCQA_OPTIONS = ("opa", "opb", "opc", "opd", "ope")
PUBMEDQA_DECISIONS = ("yes", "no", "maybe")


def normalise_layout(record: dict[str, Any]) -> dict[str, Any]:
    """Map well-known public layouts onto medlora's keys (in place, returned).

    MedQA's ``answer_idx`` letter becomes ``answer``; MedMCQA (``opa``..``ope`` + ``cop``)
    becomes ``options`` + ``answer``; PubMedQA's
    ``ori_pqal.json`` keys (``QUESTION``, ``CONTEXTS``, ``LONG_ANSWER``) and the Hugging Face copy's
    nested ``context.contexts`` become ``question``, ``contexts``, ``long_answer``.
    """
    if isinstance(record.get("answer_idx"), str) and isinstance(record.get("options"), Mapping):
        record["answer"] = record["answer_idx"]  # MedQA: the letter (``answer`` is its text)
    if "options" not in record and "opa" in record and "question" in record:
        record["options"] = [record[k] for k in MEDMCQA_OPTIONS if record.get(k) is not None]
        if "answer" not in record and "cop" in record:
            record["answer"] = record["cop"]
    for upper, lower in (
        ("QUESTION", "question"),
        ("CONTEXTS", "contexts"),
        ("LONG_ANSWER", "long_answer"),
    ):
        if upper in record and lower not in record:
            record[lower] = record[upper]
    context = record.get("context")
    if "contexts" not in record and isinstance(context, Mapping) and "contexts" in context:
        record["contexts"] = context["contexts"]
    return record


def _pubmedqa(c: _Checker) -> list[Message]:
    question = c.text("question")
    decision = c.record.get("final_decision")
    if not isinstance(decision, str) or decision.strip().lower() not in PUBMEDQA_DECISIONS:
        c.fail("final_decision", f"must be one of {list(PUBMEDQA_DECISIONS)}, got {decision!r}")
        decision = ""
    contexts = c.record.get("contexts", [])
    if isinstance(contexts, str):
        contexts = [contexts]
    if not isinstance(contexts, list) or not all(isinstance(x, str) for x in contexts):
        c.fail("contexts", "must be a list of strings (the abstract's paragraphs)")
        contexts = []
    long_answer = c.record.get("long_answer") or ""
    if not isinstance(long_answer, str):
        c.fail("long_answer", f"must be a string, got {type(long_answer).__name__}")
        long_answer = ""
    abstract = " ".join(x.strip() for x in contexts)
    user = f"Abstract: {abstract}\nQuestion: {question}" if abstract else f"Question: {question}"
    reply = f"{long_answer.strip()}\nAnswer: " if long_answer.strip() else "Answer: "
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": reply + decision.strip().lower()},
    ]


def _user_with_input(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


def to_messages(
    record: Mapping[str, Any],
    *,
    index: int,
    kind: str,
    source: str | None = None,
    system_prompt: str | None = None,
    answer_index_base: int = 0,
) -> tuple[list[Message], list[DatasetProblem]]:
    """Convert one record of ``kind`` to chat messages, with every problem found.

    ``answer_index_base`` says whether an integer multiple-choice answer counts from 0 or 1
    (MedMCQA's original ``cop`` is 1-based; the copy lm-eval uses is 0-based).
    """
    c = _Checker(record, index, source)
    messages: list[Message] = []
    if kind == "chat":
        messages = _chat(c, "messages", "role", "content", {r: r for r in ROLES})
    elif kind == "sharegpt":
        messages = _chat(c, "conversations", "from", "value", SHAREGPT_ROLES)
    elif kind == "instruction":
        instruction = c.text("instruction")
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            c.fail("input", f"must be a string, got {type(extra).__name__}")
            extra = ""
        messages = [
            {"role": "user", "content": _user_with_input(instruction, extra)},
            {"role": "assistant", "content": c.text("output")},
        ]
    elif kind == "qa":
        messages = [
            {"role": "user", "content": c.text("question")},
            {"role": "assistant", "content": c.text("answer")},
        ]
    elif kind == "summarization":
        note = c.text("note")
        messages = [
            {"role": "user", "content": f"Summarize this clinical note.\n\n{note}"},
            {"role": "assistant", "content": c.text("summary")},
        ]
    elif kind == "multiple_choice":
        question = c.text("question")
        options = _options(c)
        chosen = _mc_answer(c, options, answer_index_base) if options else None
        shown = "\n".join(f"{k}. {v}" for k, v in options)
        messages = [
            {"role": "user", "content": f"{question}\n{shown}\nAnswer:"},
            {"role": "assistant", "content": f"{chosen[0]}. {chosen[1]}" if chosen else ""},
        ]
    elif kind == "pubmedqa":
        messages = _pubmedqa(c)
    elif kind == "text":
        messages = [{"role": "assistant", "content": c.text("text")}]
    else:  # pragma: no cover - callers pass a known kind
        raise ValueError(kind)
    if system_prompt and kind != "text" and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages, c.problems


Converter = Callable[..., tuple[list[Message], list[DatasetProblem]]]
