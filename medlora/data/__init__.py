"""Records in, training examples out: loading, validation, templating, tokenization."""

from medlora.data._collate import collate
from medlora.data._dataset import ClinicalDataset, ClinicalRecord, LoadReport
from medlora.data._records import KINDS
from medlora.data._tokenize import IGNORE_INDEX, TokenizedExample, render, tokenize_messages

__all__ = [
    "ClinicalDataset",
    "ClinicalRecord",
    "IGNORE_INDEX",
    "KINDS",
    "LoadReport",
    "TokenizedExample",
    "collate",
    "render",
    "tokenize_messages",
]
