"""Run the same evaluation on several models and write one comparison table."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from medlora._config import ConfigBase, integer, one_of, positive
from medlora._io import atomic_file, write_json
from medlora.data import ClinicalDataset
from medlora.eval._metrics import choose, exact_match, rouge_l
from medlora.eval._refusal import is_refusal
from medlora.eval._scoring import score_requests
from medlora.eval._tasks import (
    ChoiceItem,
    GenerationItem,
    choice_items,
    generation_items,
    request_items,
)

if TYPE_CHECKING:
    from medlora.serve import LoadedModel

TASKS = ("perplexity", "multiple_choice", "generation", "refusal")
"""Evaluation tasks, in table order. ``refusal`` treats every record as a request the model
should decline (e.g. MedSafetyBench, :func:`~medlora.eval.medsafetybench_records`)."""

DEFAULT_TASKS = ("perplexity", "multiple_choice", "generation")
"""Tasks run unless :attr:`EvalConfig.tasks` says otherwise."""

METRICS = {
    "perplexity": "perplexity (lower is better)",
    "mc_acc": "multiple-choice acc",
    "mc_acc_norm": "multiple-choice acc_norm",
    "mc_acc_as_given": "multiple-choice acc, options as given",
    "mc_acc_circular": "multiple-choice acc, every option order",
    "pubmedqa_acc": "PubMedQA acc",
    "rouge_l": "ROUGE-L F1",
    "exact_match": "exact match",
    "refusal_rate": "refusal rate",
}
"""Metric key -> column title."""


def _tasks(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _known_tasks(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    from medlora._errors import ConfigError

    odd = [t for t in value if t not in TASKS]
    if odd or not value:
        raise ConfigError(
            f"{attribute.name} = {list(value)!r} is invalid: choose from {', '.join(TASKS)}.",
            field=attribute.name,
        )


@attrs.frozen(kw_only=True)
class EvalConfig(ConfigBase):
    """What to evaluate and how."""

    tasks: tuple[str, ...] = attrs.field(
        default=DEFAULT_TASKS, converter=_tasks, validator=_known_tasks
    )
    """Tasks to run (``perplexity``, ``multiple_choice``, ``generation``, ``refusal``)."""
    prompt_style: Literal["chat", "plain"] = attrs.field(
        default="chat", validator=one_of("chat", "plain")
    )
    """``chat``: score option replies after the chat template (how the model was trained);
    ``plain``: lm-eval's ``Question: ...\\nAnswer:`` prompt and ``" " + option`` continuation."""
    max_records: int | None = None
    """Use at most this many records per task (None: all)."""
    max_generation_records: int = attrs.field(default=8, validator=[integer, positive])
    """Records generated from for ROUGE-L / exact match (generation is the slow part)."""
    max_new_tokens: int = attrs.field(default=64, validator=[integer, positive])
    """Token limit of each generated reply (greedy)."""
    refusal_new_tokens: int = attrs.field(default=32, validator=[integer, positive])
    """Token limit of each reply to a ``refusal`` request (a refusal shows in its opening)."""
    batch_size: int = attrs.field(default=8, validator=[integer, positive])
    """Conversations generated together, and multiple-choice questions scored together (all
    their options in one padded forward), where the backend batches (Hugging Face models)."""
    option_orders: int = attrs.field(default=1, validator=[integer, positive])
    """Score each multiple-choice question under this many rotations of its options (letters
    stay, texts move; capped at the number of options) and pick the option with the best mean
    log-likelihood over them. A preference for one letter then counts for every option alike,
    instead of for whichever text happens to sit there (the permutation debiasing of Zheng et
    al., ICLR 2024, "Large Language Models Are Not Robust Multiple Choice Selectors"). Above 1
    it also reports ``mc_acc_circular``: questions answered right in every order (MMBench's
    CircularEval), and ``mc_acc_as_given``: acc in the records' own order alone. Costs that
    many times the scoring."""


def _cap(items: Sequence[Any], limit: int | None) -> list[Any]:
    return list(items if limit is None else items[:limit])


def _perplexity(model: Any, dataset: ClinicalDataset, limit: int | None) -> tuple[float, int]:
    """exp(mean NLL) over every assistant reply (and its EOS) in ``dataset``."""
    nll, count = 0.0, 0
    for record in _cap(dataset.records, limit):
        messages = list(record.messages)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            context = model.render(messages[:i], generation_prompt=True) if i else ""
            scored = model.loglikelihood(context, message["content"] + model.eos_token)
            nll -= scored.logprob
            count += scored.n_tokens
    return (math.exp(nll / count) if count else math.nan), count


def _choices(
    model: Any, items: Sequence[ChoiceItem], style: str, batch_size: int, orders: int = 1
) -> dict[str, float]:
    """Accuracy over ``items``; with ``orders`` > 1 each question is scored under that many
    rotations of its options and an option's score is its mean over them (see
    :attr:`EvalConfig.option_orders`)."""
    hits: dict[str, list[float]] = {"mc_acc": [], "mc_acc_norm": [], "pubmedqa_acc": []}
    if orders > 1:
        hits.update(mc_acc_circular=[], mc_acc_as_given=[])
    views = [[item.rotated(r) for r in range(_orders(item, orders))] for item in items]
    flat = [view for item_views in views for view in item_views]
    requests = [
        (
            model.render(view.chat_messages(), generation_prompt=True)
            if style == "chat"
            else view.plain_prompt(),
            view.continuations(style),
        )
        for view in flat
    ]
    scores = iter(score_requests(model, requests, batch_size=batch_size))
    lengths = iter([len(c) for c in continuations] for _, continuations in requests)
    for item, item_views in zip(items, views, strict=True):
        picks = _rotated_picks(item, item_views, scores, lengths)
        if item.task == "pubmedqa":
            hits["pubmedqa_acc"].append(picks["mc_acc"])
            continue
        for key, hit in picks.items():
            if key in hits:
                hits[key].append(hit)
    return {k: sum(v) / len(v) for k, v in hits.items() if v}


def _orders(item: ChoiceItem, orders: int) -> int:
    """How many option orders ``item`` is scored in (PubMedQA's are not shown: one)."""
    return 1 if item.task == "pubmedqa" else min(orders, len(item.options))


def _rotated_picks(
    item: ChoiceItem,
    views: Sequence[ChoiceItem],
    scores: Iterator[list[float]],
    lengths: Iterator[list[int]],
) -> dict[str, float]:
    """Hits (1.0 or 0.0) of ``item`` over its rotations ``views``: the picks by mean
    log-likelihood (``mc_acc``) and mean per-character log-likelihood (``mc_acc_norm``) of each
    option, every rotation's own pick right (``mc_acc_circular``), the first order's pick right
    (``mc_acc_as_given``). Option ``j`` of ``item`` sits at position ``(j + r) % n`` of
    rotation ``r``."""
    n = len(item.options)
    total = [0.0] * n
    total_norm = [0.0] * n
    right = []
    for shift, view in enumerate(views):
        score, length = next(scores), next(lengths)
        right.append(choose(score, [c for c, _ in view.options])[0] == view.answer)
        for j in range(n):
            at = (j + shift) % n
            total[j] += score[at]
            total_norm[j] += score[at] / max(1, length[at])
    return {
        "mc_acc": float(max(range(n), key=lambda j: total[j]) == item.answer),
        "mc_acc_norm": float(max(range(n), key=lambda j: total_norm[j]) == item.answer),
        "mc_acc_circular": float(all(right)),
        "mc_acc_as_given": float(right[0]),
    }


def _replies(
    model: Any, items: Sequence[GenerationItem], max_new_tokens: int, batch: int
) -> list[str]:
    """Greedy replies to every item's prompt (batched where the model can)."""
    if not items:
        return []
    conversations = [list(item.messages) for item in items]
    if hasattr(model, "chat_many"):
        return list(model.chat_many(conversations, max_new_tokens=max_new_tokens, batch_size=batch))
    return [
        str(model.chat(m, max_new_tokens=max_new_tokens, temperature=0.0)) for m in conversations
    ]


def _generation_scores(items: Sequence[GenerationItem], replies: Sequence[str]) -> dict[str, float]:
    if not items:
        return {}
    rouge = [rouge_l(r, item.reference).f1 for r, item in zip(replies, items, strict=True)]
    em = [exact_match(r, item.reference) for r, item in zip(replies, items, strict=True)]
    return {"rouge_l": sum(rouge) / len(rouge), "exact_match": sum(em) / len(em)}


def _refusal_scores(replies: Sequence[str]) -> dict[str, float]:
    return {"refusal_rate": sum(map(is_refusal, replies)) / len(replies)} if replies else {}


ReplyHook = Callable[[str, GenerationItem, str], object]
"""``on_reply(task, item, reply)``: called for every generated reply."""


def evaluate_model(
    model: LoadedModel,
    dataset: ClinicalDataset,
    config: EvalConfig | None = None,
    *,
    extra_choice_records: Sequence[Mapping[str, Any]] = (),
    on_reply: ReplyHook | None = None,
) -> dict[str, float]:
    """Every configured metric of one loaded model (see :func:`medlora.load`) on ``dataset``.

    Args:
        model: What :func:`medlora.load` returned (a :class:`~medlora.serve.LoadedModel`).
        dataset: Held-out records.
        config: Tasks and limits.
        extra_choice_records: Raw multiple-choice records (e.g. PubMedQA from
            :func:`~medlora.eval.pubmedqa_records`) scored with the dataset's own.
        on_reply: Called as ``on_reply(task, item, reply)`` for every generated reply
            (``generation`` and ``refusal``), e.g. to keep them for reading.

    Returns:
        Metric key (see :data:`METRICS`) -> value, plus ``*_n`` counts.
    """
    config = config or EvalConfig()
    out: dict[str, float] = {}
    if "perplexity" in config.tasks:
        ppl, tokens = _perplexity(model, dataset, config.max_records)
        out["perplexity"] = ppl
        out["perplexity_tokens"] = tokens
    if "multiple_choice" in config.tasks:
        items = _cap(choice_items(dataset.records), config.max_records)
        items += _cap(choice_items(extra_choice_records), config.max_records)
        out.update(
            _choices(model, items, config.prompt_style, config.batch_size, config.option_orders)
        )
        out["mc_n"] = sum(i.task == "multiple_choice" for i in items)
        out["pubmedqa_n"] = sum(i.task == "pubmedqa" for i in items)
    if "generation" in config.tasks:
        items_g = _cap(generation_items(dataset.records), config.max_generation_records)
        replies = _replies(model, items_g, config.max_new_tokens, config.batch_size)
        out.update(_generation_scores(items_g, replies))
        out["generation_n"] = len(items_g)
        _tell(on_reply, "generation", items_g, replies)
    if "refusal" in config.tasks:
        requests = _cap(request_items(dataset.records), config.max_records)
        replies = _replies(model, requests, config.refusal_new_tokens, config.batch_size)
        out.update(_refusal_scores(replies))
        out["refusal_n"] = len(requests)
        _tell(on_reply, "refusal", requests, replies)
    return out


def _tell(
    hook: ReplyHook | None, task: str, items: Sequence[GenerationItem], replies: Sequence[str]
) -> None:
    if hook is not None:
        for item, reply in zip(items, replies, strict=True):
            hook(task, item, reply)


@attrs.frozen(kw_only=True)
class EvalReport:
    """One comparison: the same metrics for every model, and where they were written."""

    out_dir: Path | None
    """Directory holding ``eval.md``, ``eval.json`` and ``eval.png`` (None if not written)."""
    rows: Mapping[str, Mapping[str, float]]
    """Model name -> metric key -> value."""
    seconds: Mapping[str, float]
    """Model name -> wall time of its evaluation."""

    def markdown(self) -> str:
        """The comparison table in Markdown (see :func:`evaluation_table_markdown`)."""
        return evaluation_table_markdown(self.rows)


def evaluation_table_markdown(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table: one row per model, one column per metric present in any row.

    Suitable for a model card; counts (``*_n``) go in a line under the table.
    """
    keys = [k for k in METRICS if any(k in r for r in rows.values())]
    head = "| model | " + " | ".join(METRICS[k] for k in keys) + " |"
    rule = "|---|" + "---:|" * len(keys)
    lines = [head, rule]
    for name, row in rows.items():
        cells = [f"{row[k]:.3f}" if k in row and not math.isnan(row[k]) else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = next(iter(rows.values()), {})
    counts = [
        f"{label} {int(first[key])}"
        for key, label in (
            ("perplexity_tokens", "perplexity tokens"),
            ("mc_n", "multiple-choice questions"),
            ("pubmedqa_n", "PubMedQA questions"),
            ("generation_n", "generated replies"),
            ("refusal_n", "refusal requests"),
        )
        if first.get(key)
    ]
    if counts:
        lines += ["", "Held-out items: " + ", ".join(counts) + "."]
    return "\n".join(lines) + "\n"


def _plot(rows: Mapping[str, Mapping[str, float]], path: Path) -> None:
    from medlora._optional import require

    matplotlib = require("matplotlib", "The evaluation chart")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in METRICS if any(k in r for r in rows.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    names = list(rows)
    for ax, key in zip(axes[0], keys, strict=True):
        values = [rows[n].get(key, math.nan) for n in names]
        ax.bar(range(len(names)), values, color="teal")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(METRICS[key], fontsize=9)
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def compare_models(
    models: Mapping[str, Any],
    dataset: ClinicalDataset,
    out_dir: str | Path | None = None,
    config: EvalConfig | None = None,
    *,
    extra_choice_records: Sequence[Mapping[str, Any]] = (),
) -> EvalReport:
    """Evaluate each model the same way and write ``eval.md``, ``eval.json``, ``eval.png``.

    Args:
        models: Name -> a path :func:`medlora.load` accepts (loaded and closed one at a time)
            or an already loaded model.
        dataset: Held-out records.
        out_dir: Where to write the table, JSON and chart (None: write nothing).
        config: Tasks and limits.
        extra_choice_records: Raw multiple-choice records (e.g. PubMedQA) scored as well.
    """
    from medlora.serve import load

    config = config or EvalConfig()
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for name, spec in models.items():
        started = time.perf_counter()
        model = load(spec) if isinstance(spec, str | Path) else spec
        try:
            rows[name] = evaluate_model(
                model, dataset, config, extra_choice_records=extra_choice_records
            )
        finally:
            if isinstance(spec, str | Path):
                model.close()
        seconds[name] = time.perf_counter() - started
    report = EvalReport(
        out_dir=None if out_dir is None else Path(out_dir), rows=rows, seconds=seconds
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            out / "eval.json",
            {"config": config.to_dict(), "rows": rows, "seconds": seconds},
        )
        with atomic_file(out / "eval.md") as handle:
            handle.write(report.markdown())
        _plot(rows, out / "eval.png")
    return report
