"""4-bit base + LoRA: configs, model loading and the training loop."""

from medlora.training._callbacks import Callback
from medlora.training._config import LoraConfig, QuantizationConfig, TrainingConfig
from medlora.training._datasets import HeldOutSplit, RunData, run_data, run_datasets
from medlora.training._model import Precision, count_4bit_linear, load_base_model
from medlora.training._record import RunDataCard, RunMetrics, RunRecord
from medlora.training._result import TrainingResult
from medlora.training._trainer import QLoRATrainer

__all__ = [
    "Callback",
    "HeldOutSplit",
    "LoraConfig",
    "Precision",
    "QLoRATrainer",
    "QuantizationConfig",
    "RunData",
    "RunDataCard",
    "RunMetrics",
    "RunRecord",
    "TrainingConfig",
    "TrainingResult",
    "count_4bit_linear",
    "load_base_model",
    "run_data",
    "run_datasets",
]
