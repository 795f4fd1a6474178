"""Run an exported model: ``load`` it in Python, or serve it over an OpenAI-compatible API."""

from medlora._vllm import (
    SUPPORTED_ARCHITECTURES,
    VLLM_LORA_MODULES,
    check_vllm_contract,
    exec_vllm,
    vllm_available,
    vllm_command,
)
from medlora.serve._load import (
    GenerateKeywords,
    GGUFModel,
    HFModel,
    LoadedModel,
    Loglikelihood,
    load,
)
from medlora.serve._server import (
    ServeConfig,
    create_gguf_app,
    serve_gguf,
    validate_request,
)

__all__ = [
    "GGUFModel",
    "GenerateKeywords",
    "HFModel",
    "LoadedModel",
    "Loglikelihood",
    "SUPPORTED_ARCHITECTURES",
    "ServeConfig",
    "VLLM_LORA_MODULES",
    "check_vllm_contract",
    "create_gguf_app",
    "exec_vllm",
    "load",
    "serve_gguf",
    "validate_request",
    "vllm_available",
    "vllm_command",
]
