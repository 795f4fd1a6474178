"""Records in, training examples out: loading, validation, templating, tokenization."""

from medlora.data._arrow import ArrowDataset
from medlora.data._arrow_prepare import ArrowPrepared, ArrowRows
from medlora.data._chat import reply_end_token, stop_token_ids, stop_tokens
from medlora.data._collate import collate
from medlora.data._config import DataConfig, LoadedData, data_config
from medlora.data._dataset import ClinicalDataset
from medlora.data._hygiene import DataCard, DedupReport
from medlora.data._pack import PackingReport, collate_packed, pack_examples
from medlora.data._phi import (
    PHI_KINDS,
    PHIDetector,
    PHIReport,
    PHISpan,
    find_phi,
    redact_text,
)
from medlora.data._prepare import PreparedData
from medlora.data._records import KINDS
from medlora.data._tokenize import (
    IGNORE_INDEX,
    TokenizedExample,
    encode_chat,
    render,
    tokenize_batch,
    tokenize_messages,
)
from medlora.data._validate import (
    ClinicalRecord,
    LoadKeywords,
    LoadOptions,
    LoadReport,
    validate_row,
)

__all__ = [
    "ArrowDataset",
    "ArrowPrepared",
    "ArrowRows",
    "ClinicalDataset",
    "ClinicalRecord",
    "DataCard",
    "DataConfig",
    "DedupReport",
    "IGNORE_INDEX",
    "KINDS",
    "LoadKeywords",
    "LoadOptions",
    "LoadReport",
    "LoadedData",
    "PHIDetector",
    "PHIReport",
    "PHISpan",
    "PHI_KINDS",
    "PackingReport",
    "PreparedData",
    "TokenizedExample",
    "collate",
    "collate_packed",
    "data_config",
    "encode_chat",
    "find_phi",
    "pack_examples",
    "redact_text",
    "render",
    "reply_end_token",
    "stop_token_ids",
    "stop_tokens",
    "tokenize_batch",
    "tokenize_messages",
    "validate_row",
]
