"""4-bit base + LoRA: configs, model loading and the training loop."""

from medlora.training._config import LoraConfig, QuantizationConfig, TrainingConfig
from medlora.training._model import count_4bit_linear
from medlora.training._trainer import QLoRATrainer, TrainingResult

__all__ = [
    "LoraConfig",
    "QLoRATrainer",
    "QuantizationConfig",
    "TrainingConfig",
    "TrainingResult",
    "count_4bit_linear",
]
