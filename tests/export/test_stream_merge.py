"""Streaming merge: same tensors and layout as peft's merge_and_unload + save_pretrained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medlora import ExportError
from medlora._safetensors import write_safetensors
from medlora.export._merge import load_upcast, merged_model, write_merged_weights
from medlora.export._stream_merge import (
    read_lora,
    stream_merge,
    unsupported_features,
)
from medlora.training import QuantizationConfig

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapter(base: Path, out: Path, **lora: Any) -> Path:
    """A random (non-zero) LoRA adapter on ``base``, saved as peft does."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = peft.LoraConfig(init_lora_weights=False, **{"target_modules": TARGETS, **lora})
    model = peft.get_peft_model(model, config)
    with torch.no_grad():  # B is random too, scaled so the delta is comparable to W
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_dir(random_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rsLoRA r=8 (q_proj r=4 by rank_pattern), alpha 16, on every linear layer."""
    out = tmp_path_factory.mktemp("lora")
    return _adapter(
        random_model_dir, out, r=8, lora_alpha=16, use_rslora=True, rank_pattern={"q_proj": 4}
    )


def _tensors(model_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        out.update(safetensors_torch.load_file(str(file)))
    return out


@pytest.mark.parametrize("strategy", ["original", "nf4-roundtrip"])
def test_streamed_merge_equals_peft_merge_and_unload(
    strategy: str, random_model_dir: Path, lora_dir: Path, tmp_path: Path
) -> None:
    quant = QuantizationConfig()
    reference = tmp_path / "peft"
    model = merged_model(random_model_dir, lora_dir, strategy=strategy, quant=quant)
    model.to(torch.float16).save_pretrained(reference, max_shard_size="1MB")
    streamed = stream_merge(
        random_model_dir,
        lora_dir,
        tmp_path / "streamed",
        strategy=strategy,
        quant=quant,
        max_shard_size="1MB",
    )
    # Same files: shard names and the index (save_pretrained's split, forced by 1MB shards).
    files = sorted(p.name for p in streamed.iterdir())
    assert files == sorted(
        p.name for p in reference.iterdir() if p.name != "generation_config.json"
    )
    assert len([f for f in files if f.endswith(".safetensors")]) > 2
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert index == json.loads((reference / "model.safetensors.index.json").read_text())
    config = json.loads((streamed / "config.json").read_text())
    assert config == json.loads((reference / "config.json").read_text())
    assert config["dtype"] == "float16"
    # Same tensors, bit for bit (measured max |diff| 0.0 for both strategies: the same float32
    # ops in the same order, then one rounding to fp16), so every shard is byte-identical.
    ours, theirs = _tensors(streamed), _tensors(reference)
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == torch.float16 for k in ours)
    for name in files:
        if name.endswith(".safetensors"):
            assert (streamed / name).read_bytes() == (reference / name).read_bytes(), name
    # and the adapter changed every targeted weight
    base = _tensors(random_model_dir)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (ours[q].float() - base[q].half().float()).abs().max() > 1e-2


def test_single_file_layout_is_save_pretrained_s(
    random_model_dir: Path, lora_dir: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "peft"
    model = merged_model(random_model_dir, lora_dir, strategy="original", quant=None)
    model.to(torch.float16).save_pretrained(reference)
    streamed = stream_merge(
        random_model_dir, lora_dir, tmp_path / "streamed", strategy="original", quant=None
    )
    assert sorted(p.name for p in streamed.iterdir()) == ["config.json", "model.safetensors"]
    ours = (streamed / "model.safetensors").read_bytes()
    assert ours == (reference / "model.safetensors").read_bytes()


def test_merge_adapter_writes_a_loadable_directory_with_the_tokenizer(
    random_model_dir: Path, lora_dir: Path, tmp_path: Path
) -> None:
    """The public merge: the streamed weights (byte-identical to peft's, above) plus the base's
    tokenizer, loadable by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medlora.export import merge_adapter

    out = merge_adapter(random_model_dir, lora_dir, tmp_path / "merged")
    reference = stream_merge(
        random_model_dir, lora_dir, tmp_path / "ref", strategy="original", quant=None
    )
    weights = (out / "model.safetensors").read_bytes()
    assert weights == (reference / "model.safetensors").read_bytes()
    assert (out / "tokenizer_config.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.float16
    base_tok = AutoTokenizer.from_pretrained(random_model_dir)
    assert AutoTokenizer.from_pretrained(out)("sepsis").input_ids == base_tok("sepsis").input_ids


def test_write_safetensors_is_byte_identical_to_save_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        tensors = {
            "b.weight": torch.randn(3, 5).to(dtype),
            "a.weight": torch.randn(7).to(dtype),
            "c": torch.randn(2, 3, 4).to(dtype),
        }
        safetensors_torch.save_file(tensors, str(tmp_path / "ref.safetensors"), {"format": "pt"})
        name = str(dtype).removeprefix("torch.")
        ours = write_safetensors(
            tmp_path / "ours.safetensors",
            {k: tuple(v.shape) for k, v in tensors.items()},
            tensors.__getitem__,
            dtype=name,
        )
        assert ours.read_bytes() == (tmp_path / "ref.safetensors").read_bytes(), name


def test_unsupported_adapter_gets_a_typed_error_naming_file_and_key(
    random_model_dir: Path, lora_dir: Path, tmp_path: Path
) -> None:
    dora = _adapter(random_model_dir, tmp_path / "dora", r=4, use_dora=True)
    problems = unsupported_features(dora)
    assert any("adapter_config.json: use_dora=true" in p for p in problems), problems
    assert any("lora_magnitude_vector" in p and "adapter_model.safetensors" in p for p in problems)
    with pytest.raises(ExportError, match=r"adapter_config\.json: use_dora=true"):
        read_lora(dora)
    # A key whose module the base lacks: named with its file.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((lora_dir / "adapter_config.json").read_text())
    tensors = safetensors_torch.load_file(str(lora_dir / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = tensors[key].clone()
    tensors["base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight"] = tensors[
        key.replace("lora_A", "lora_B")
    ].clone()
    safetensors_torch.save_file(tensors, str(broken / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match=r"adapter_model\.safetensors: .*layers\.9\.self_attn"):
        stream_merge(random_model_dir, broken, tmp_path / "out", strategy="original", quant=None)
    assert not (tmp_path / "out" / "model.safetensors").exists()
    # A lora_A without its lora_B.
    del tensors["base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight"]
    safetensors_torch.save_file(tensors, str(broken / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match=r"adapter_model\.safetensors: .*layers\.9.* lora_B"):
        read_lora(broken)


def test_unsupported_adapter_falls_back_to_the_peft_merge(
    random_model_dir: Path, tmp_path: Path
) -> None:
    dora = _adapter(random_model_dir, tmp_path / "dora", r=4, use_dora=True)
    out = tmp_path / "merged"
    path = write_merged_weights(
        random_model_dir, dora, out, strategy="original", quant=None, dtype="float16"
    )
    assert path == "peft"
    expected = merged_model(random_model_dir, dora, strategy="original", quant=None)
    ours = _tensors(out)
    for name, param in expected.state_dict().items():
        assert torch.equal(ours[name], param.to(torch.float16)), name


def test_fp32_compute_over_fp16_storage_equals_fp32_loading(
    random_model_dir: Path, lora_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from medlora.export._parity import hf_logits

    merged = stream_merge(
        random_model_dir, lora_dir, tmp_path / "merged", strategy="original", quant=None
    )
    ids = [[1, 5, 9, 300, 17, 2], [1, 44, 901, 23]]
    upcast = load_upcast(merged)
    assert {p.dtype for p in upcast.parameters()} == {torch.float16}
    fp32 = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    ours, theirs = hf_logits(upcast, ids), hf_logits(fp32, ids)
    diff = max((a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True))
    # Measured: 0.0 (the same float32 weights and ops).
    assert diff <= 1e-6, diff
    # Computing in fp16 instead is measurably different, so the test can fail.
    half = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float16)
    try:
        fp16 = hf_logits(half, ids)
    except RuntimeError:  # some CPUs have no fp16 kernels: then nothing to compare
        return
    assert max((a - b).abs().max().item() for a, b in zip(fp16, theirs, strict=True)) > 1e-4


def test_the_trained_adapter_takes_the_streaming_path(trained_run: Any) -> None:
    # medlora's default LoRA (all linear layers, no DoRA) is merged without the peft path.
    assert unsupported_features(trained_run.adapter_dir) == []
    pairs, fan_in_fan_out = read_lora(trained_run.adapter_dir)
    assert len(pairs) == 7 * 2 and not fan_in_fan_out  # 7 projections x 2 layers


def test_export_measures_the_directory_it_ships(exported: Any, trained_run: Any) -> None:
    from medlora._hub import load_tokenizer
    from medlora.export._merge import load_trained
    from medlora.export._parity import compare, hf_logits, probe_ids

    assert not list(exported.out_dir.rglob(".merged-*"))  # the other candidate is deleted
    ids = probe_ids(load_tokenizer(exported.merged_dir))
    trained = hf_logits(
        load_trained(trained_run.base_model, trained_run.adapter_dir, QuantizationConfig()), ids
    )
    shipped = compare(trained, hf_logits(load_upcast(exported.merged_dir), ids)).to_dict()
    recorded = exported.parity["merge"][exported.merge_strategy]
    # probe fields only: held-out replies are checked in test_fidelity (0 positions here)
    probe_fields = [k for k, v in shipped.items() if v is not None and not k.startswith("reply_")]
    assert {k: shipped[k] for k in probe_fields} == pytest.approx(
        {k: recorded[k] for k in probe_fields}, rel=1e-9, abs=1e-12
    )
