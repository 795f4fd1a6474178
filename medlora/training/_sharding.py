"""FSDP2 for QLoRA: shard the model over processes, gather what is saved.

``fully_shard`` goes on every decoder layer and on the root :class:`CausalLMLoss` (which holds
the embeddings, the final norm and the head, so the head runs inside the wrapped forward).
FSDP shards one dtype per unit: the 4-bit weights are stored in the compute dtype
(``quant_storage``) and every other weight is cast to it (:func:`attach_lora`), so each unit
holds one dtype. Gradient clipping over the sharded (DTensor) gradients computes the global
norm. Saving gathers full tensors on every rank (a collective), then the main process writes.
Imported only when training starts.
"""

from __future__ import annotations

from typing import Any

import torch


def is_sharded(module: Any) -> bool:
    """Whether ``fully_shard`` has been applied to ``module``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard(objective: Any) -> Any:
    """Apply ``fully_shard`` to each decoder layer and to ``objective`` (in place)."""
    from torch.distributed.fsdp import fully_shard

    for layer in objective.base().model.layers:
        fully_shard(layer)
    fully_shard(objective)
    return objective


def _full(tensor: Any) -> Any:
    local = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return local.detach().to("cpu", copy=True)


def adapter_state(peft_model: Any) -> dict[str, Any]:
    """The trainable (adapter) weights by their names in ``peft_model``, full and on the CPU;
    every rank must call it when the model is sharded."""
    return {n: _full(p) for n, p in peft_model.named_parameters() if p.requires_grad}


def load_adapter_state(peft_model: Any, state: dict[str, Any]) -> None:
    """Copy full adapter tensors (from :func:`adapter_state`) into the possibly sharded
    parameters of ``peft_model``."""
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, full in state.items():
            param = params[name]
            if hasattr(param, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor

                part = distribute_tensor(
                    full.to(param.device_mesh.device_type), param.device_mesh, param.placements
                )
                param.to_local().copy_(part.to_local())
            else:
                param.copy_(full)


def optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer's full state (every rank must call it; keys are parameter names)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=options)
    return state


def load_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Load a full optimizer state from :func:`optimizer_state` into a sharded run."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )
