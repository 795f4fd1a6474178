"""The LoRA adapter alone as a GGUF adapter, applied by llama.cpp on top of the base GGUF.

Reference: the HF base in float32 with the peft adapter applied (not the 4-bit base), so the
only differences left are llama.cpp's kernels and the file format. Measured here on the tiny
model with a random (non-zero) rank-8 adapter on all seven linear layers, 12 chat probes
(633 positions): max |logit diff| 1.9e-3 on the F32 base GGUF (3.5e-3 on F16), top-1
agreement 0.998 (one near-tie). Without the adapter the base differs from the adapted model
by 0.69 in the logits (top-1 0.930), so the test cannot pass by accident.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medlora._errors import ExportError
from medlora.export import open_gguf, write_gguf, write_lora_gguf

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A rank-8 adapter with random A *and* B (peft's init_lora_weights=False), alpha 16."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0
    )
    model = get_peft_model(base, config)
    with torch.no_grad():  # peft's random B is large; keep the delta realistic but visible
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    out = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def probes(tiny_model_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    from medlora.export._parity import probe_ids

    return probe_ids(AutoTokenizer.from_pretrained(tiny_model_dir), n=12)


def _hf(model_dir: Path, adapter: Path | None, ids: list[list[int]]) -> list[np.ndarray]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.no_grad():
        return [model(torch.tensor([s])).logits[0].numpy() for s in ids]  # (seq, vocab)


def _llama(path: Path, ids: list[list[int]], **kwargs: Any) -> list[np.ndarray]:
    llm = open_gguf(path, n_ctx=256, n_threads=2, logits_all=True, **kwargs)
    try:
        out = []
        for seq in ids:
            llm.reset()
            llm.eval(seq)
            out.append(np.array(llm.scores[: len(seq)], dtype=np.float32))
        return out
    finally:
        llm.close()


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def _top1(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    return same / sum(x.shape[0] for x in a)


def test_gguf_adapter_on_base_gguf_matches_hf_adapter_model(
    tmp_path: Path, tiny_model_dir: Path, random_adapter: Path, probes: list[list[int]]
) -> None:
    base = write_gguf(tiny_model_dir, tmp_path / "base-F32.gguf", outtype="F32")
    lora = write_lora_gguf(
        random_adapter,
        tmp_path / "lora.gguf",
        base_model_dir=tiny_model_dir,
        metadata={"general.base_model": "medlora/tiny-llama"},
    )
    expected = _hf(tiny_model_dir, random_adapter, probes)
    plain = _hf(tiny_model_dir, None, probes)
    applied = _llama(base, probes, lora_path=str(lora))
    # The adapter moves the logits by a lot; llama.cpp's adapter lands where peft's does.
    assert _max_diff(expected, plain) > 0.3
    assert _max_diff(expected, applied) < 1e-2
    assert _top1(expected, applied) >= 0.995


def test_gguf_adapter_metadata_and_tensors(
    tmp_path: Path, tiny_model_dir: Path, random_adapter: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    lora = write_lora_gguf(random_adapter, tmp_path / "lora.gguf", base_model_dir=tiny_model_dir)
    reader = gguf.GGUFReader(str(lora))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.type"] == "adapter"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0
    assert fields["medlora.version"]
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * 7 * 2  # 7 modules x 2 layers x (a, b)
    assert "blk.0.attn_q.weight.lora_a" in tensors and "blk.1.ffn_down.weight.lora_b" in tensors
    peft = load_file(str(random_adapter / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.0.self_attn"
    # lora_A is never permuted; lora_B of v (not q/k) is copied as is.
    a = np.array(tensors["blk.0.attn_q.weight.lora_a"].data).reshape(8, -1)
    assert np.array_equal(a, peft[f"{prefix}.q_proj.lora_A.weight"].to(torch.float32).numpy())
    b_v = np.array(tensors["blk.0.attn_v.weight.lora_b"].data).reshape(-1, 8)
    assert np.array_equal(b_v, peft[f"{prefix}.v_proj.lora_B.weight"].numpy())
    b_q = np.array(tensors["blk.0.attn_q.weight.lora_b"].data).reshape(-1, 8)
    assert not np.array_equal(b_q, peft[f"{prefix}.q_proj.lora_B.weight"].numpy())
    assert sorted(b_q.ravel()) == sorted(peft[f"{prefix}.q_proj.lora_B.weight"].numpy().ravel())


def test_gguf_adapter_refuses_what_llama_cpp_cannot_apply(
    tmp_path: Path, tiny_model_dir: Path, random_adapter: Path
) -> None:
    import shutil

    bad = tmp_path / "dora"
    shutil.copytree(random_adapter, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    config.update(use_dora=True, modules_to_save=["lm_head"])
    (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"use_dora.*modules_to_save"):
        write_lora_gguf(bad, tmp_path / "x.gguf", base_model_dir=tiny_model_dir)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))
