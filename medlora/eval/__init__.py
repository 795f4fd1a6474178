"""Evaluation: perplexity, multiple-choice accuracy and generation scores, compared across the
base model, the adapter, the merged model and each GGUF file."""

from medlora.eval._metrics import (
    RougeL,
    choose,
    exact_match,
    lcs_length,
    normalize_answer,
    perplexity,
    rouge_l,
)
from medlora.eval._runner import (
    METRICS,
    TASKS,
    EvalConfig,
    EvalReport,
    compare_models,
    evaluate_model,
    evaluation_table_markdown,
)
from medlora.eval._tasks import (
    ChoiceItem,
    GenerationItem,
    choice_items,
    generation_items,
    pubmedqa_records,
)

__all__ = [
    "ChoiceItem",
    "EvalConfig",
    "EvalReport",
    "GenerationItem",
    "METRICS",
    "RougeL",
    "TASKS",
    "choice_items",
    "choose",
    "compare_models",
    "evaluate_model",
    "evaluation_table_markdown",
    "exact_match",
    "generation_items",
    "lcs_length",
    "normalize_answer",
    "perplexity",
    "pubmedqa_records",
    "rouge_l",
]
