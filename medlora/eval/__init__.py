"""Evaluation: perplexity, multiple-choice accuracy, generation scores and refusal rate,
compared across the base model, the adapter, the merged model and each GGUF file."""

from medlora.eval._cli import held_out_dataset, models_of_export
from medlora.eval._metrics import (
    RougeL,
    choose,
    exact_match,
    lcs_length,
    normalize_answer,
    perplexity,
    rouge_l,
)
from medlora.eval._refusal import (
    REFUSAL_PATTERNS,
    DetectorCheck,
    check_refusal_detector,
    is_refusal,
    refusal_rate,
)
from medlora.eval._runner import (
    DEFAULT_TASKS,
    METRICS,
    TASKS,
    EvalConfig,
    EvalReport,
    compare_models,
    evaluate_model,
    evaluation_table_markdown,
)
from medlora.eval._scoring import score_requests
from medlora.eval._tasks import (
    ChoiceItem,
    GenerationItem,
    choice_items,
    generation_items,
    medsafetybench_records,
    pubmedqa_records,
    request_items,
)

__all__ = [
    "ChoiceItem",
    "DEFAULT_TASKS",
    "DetectorCheck",
    "EvalConfig",
    "EvalReport",
    "GenerationItem",
    "METRICS",
    "REFUSAL_PATTERNS",
    "RougeL",
    "TASKS",
    "check_refusal_detector",
    "choice_items",
    "choose",
    "compare_models",
    "evaluate_model",
    "evaluation_table_markdown",
    "exact_match",
    "generation_items",
    "held_out_dataset",
    "is_refusal",
    "lcs_length",
    "medsafetybench_records",
    "models_of_export",
    "normalize_answer",
    "perplexity",
    "pubmedqa_records",
    "refusal_rate",
    "request_items",
    "rouge_l",
    "score_requests",
]
