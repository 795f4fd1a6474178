"""medlora: QLoRA fine-tuning of small Llama models on clinical text, shipped to vLLM and llama.cpp.

Importing medlora is cheap: torch, bitsandbytes, gguf and llama.cpp load only when used.
"""

from medlora._errors import (
    ConfigError,
    DatasetError,
    DatasetProblem,
    ExportError,
    MedLoraError,
    MissingDependencyError,
    ModelLoadError,
    OutOfMemoryError,
    PHIDetectedError,
    TrainingError,
)
from medlora.data import ArrowDataset, ClinicalDataset, ClinicalRecord, DataCard, DataConfig
from medlora.export import AdapterExporter, ExportConfig, ExportResult
from medlora.serve import LoadedModel, load
from medlora.training import (
    LoraConfig,
    QLoRATrainer,
    QuantizationConfig,
    RunDataCard,
    RunMetrics,
    RunRecord,
    TrainingConfig,
    TrainingResult,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterExporter",
    "ArrowDataset",
    "ClinicalDataset",
    "ClinicalRecord",
    "ConfigError",
    "DataCard",
    "DataConfig",
    "DatasetError",
    "DatasetProblem",
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "LoadedModel",
    "LoraConfig",
    "MedLoraError",
    "MissingDependencyError",
    "ModelLoadError",
    "OutOfMemoryError",
    "PHIDetectedError",
    "QLoRATrainer",
    "QuantizationConfig",
    "RunDataCard",
    "RunMetrics",
    "RunRecord",
    "TrainingConfig",
    "TrainingError",
    "TrainingResult",
    "__version__",
    "load",
]
