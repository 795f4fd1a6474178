"""The importance matrix: collected per input column, keyed by GGUF name, and taken by
llama.cpp's quantizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from medlora import ExportError
from medlora.export import ImportanceMatrix, collect_imatrix, quantize_gguf, write_gguf
from medlora.export._imatrix import check_imatrix_log

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")
pytest.importorskip("llama_cpp")

BLOCK_TENSORS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.fixture(scope="module")
def model_and_f16(random_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(random_model_dir, dtype=torch.float32).eval()
    f16 = write_gguf(
        random_model_dir, tmp_path_factory.mktemp("imatrix") / "F16.gguf", outtype="F16"
    )
    return model, f16


def _ids(n: int = 4, length: int = 48) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, 1000, (n, length), generator=generator).tolist()


def test_keyed_by_gguf_name_one_value_per_input_column(model_and_f16: Any) -> None:
    model, f16 = model_and_f16
    imatrix = collect_imatrix(model, _ids(), dataset="random ids")
    layers = model.config.num_hidden_layers
    assert set(imatrix.values) == {
        f"blk.{i}.{name}.weight" for i in range(layers) for name in BLOCK_TENSORS
    }  # no output.weight (llama-imatrix's default) and no token_embd.weight (a lookup)
    assert imatrix.tokens == 4 * 48 and imatrix.chunks == 4
    in_features = {t.name: int(t.shape[0]) for t in gguf.GGUFReader(str(f16)).tensors}
    for name, value in imatrix.values.items():
        assert value.dtype == np.float32 and value.shape == (in_features[name],), name
        assert np.all(value > 0), name


def test_values_are_the_mean_square_of_each_input_column(model_and_f16: Any) -> None:
    """Q, K and V read the same normed hidden states, so their entries are equal: the
    rotate-half -> pairwise permutation GGUF applies to Q and K moves output rows only and
    leaves these input-column statistics where they are. Checked against the input
    layer norm's output, captured separately."""
    model, _ = model_and_f16
    ids = _ids()
    captured: list[Any] = []
    norm = model.model.layers[1].input_layernorm
    handle = norm.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        imatrix = collect_imatrix(model, ids)
    finally:
        handle.remove()
    x = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured])  # (tokens, hidden)
    expected = x.double().pow(2).mean(0).numpy()
    for name in ("attn_q", "attn_k", "attn_v"):
        np.testing.assert_allclose(imatrix.values[f"blk.1.{name}.weight"], expected, rtol=1e-5)
    assert not np.allclose(imatrix.values["blk.1.ffn_up.weight"][:64], expected[:64])


def _tensor_bytes(path: Path, name: str) -> Any:
    tensor = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)
    return tensor


def test_llama_cpp_quantizes_with_it(
    model_and_f16: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Boosting every other input column of one matrix a thousandfold makes llama.cpp's Q4_K
    rounding favour them: their dequantized error drops, the other columns' rises, the
    tensor's bytes change, llama.cpp's log says it took the matrix, and the file records it as
    llama-quantize does."""
    model, f16 = model_and_f16
    imatrix = collect_imatrix(model, _ids(), dataset="random ids")
    target = "blk.0.attn_output.weight"
    boost = np.ones_like(imatrix.values[target])
    boost[::2] = 1000.0
    boosted = ImportanceMatrix(
        values={**imatrix.values, target: imatrix.values[target] * boost},
        tokens=imatrix.tokens,
        chunks=imatrix.chunks,
        dataset="boosted",
    )
    plain = quantize_gguf(f16, tmp_path / "plain.gguf", "Q4_K_M", threads=1)
    with caplog.at_level(logging.DEBUG, logger="medlora.export"):
        weighted = quantize_gguf(f16, tmp_path / "w.gguf", "Q4_K_M", threads=1, imatrix=boosted)
    assert "have importance matrix data with 14 entries" in caplog.text

    original = _tensor_bytes(f16, target)
    reference = gguf.quants.dequantize(original.data, original.tensor_type).astype(np.float64)
    errors = {}
    for label, path in (("plain", plain), ("weighted", weighted)):
        tensor = _tensor_bytes(path, target)
        assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_K
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        squared = (values - reference) ** 2  # (out, in): columns are input features
        errors[label] = (squared[:, ::2].mean(), squared[:, 1::2].mean())
    assert bytes(_tensor_bytes(plain, target).data) != bytes(_tensor_bytes(weighted, target).data)
    # measured: boosted columns' squared error 0.84x the plain file's, the others' 1.45x
    assert errors["weighted"][0] < 0.9 * errors["plain"][0], errors
    assert errors["weighted"][1] > 1.2 * errors["plain"][1], errors

    fields = gguf.GGUFReader(str(weighted)).fields
    assert fields["quantize.imatrix.entries_count"].contents() == 14
    assert fields["quantize.imatrix.chunks_count"].contents() == 4
    assert fields["quantize.imatrix.dataset"].contents() == "boosted"
    assert "quantize.imatrix.entries_count" not in gguf.GGUFReader(str(plain)).fields


def test_the_quantizer_must_report_the_matrix() -> None:
    imatrix = ImportanceMatrix(values={"blk.0.attn_q.weight": np.ones(4)}, tokens=1, chunks=1)
    with pytest.raises(ExportError, match="did not report the importance matrix"):
        check_imatrix_log(["llama_model_quantize_impl: model size = 3 MB"], imatrix)
    log = [
        "llama_model_quantize_impl: have importance matrix data with 1 entries",
        "====== llama_model_quantize_impl: did not find weights for blk.0.attn_k.weight",
        "====== llama_model_quantize_impl: did not find weights for token_embd.weight",
    ]
    with pytest.warns(UserWarning, match="no importance-matrix entry for 1 block tensors"):
        check_imatrix_log(log, imatrix)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ExportError, match="negative or non-finite"):
        ImportanceMatrix(
            values={"blk.0.attn_q.weight": np.array([1.0, np.nan])}, tokens=1, chunks=1
        )
