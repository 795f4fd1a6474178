"""Fidelity on held-out replies: the metrics by hand, the scored positions, the gates."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from medlora import ConfigError, ExportConfig
from medlora.data import IGNORE_INDEX, TokenizedExample
from medlora.export import (
    DEFAULT_MAX_PPL_RATIO,
    DEFAULT_MIN_AGREEMENT,
    Agreement,
    FidelityText,
    compare_replies,
)
from medlora.export._gguf_checks import gate_problems, gguf_row

torch = pytest.importorskip("torch")


def test_kl_and_perplexity_ratio_by_hand() -> None:
    """Two texts of one position each, vocabulary of two.

    Text A: reference p = (3/4, 1/4), candidate q = (1/4, 3/4), next token 0.
    KL = 3/4 ln 3 + 1/4 ln(1/3) = ln(3)/2; NLL reference ln(4/3), candidate ln 4.
    Text B: both (1/4, 3/4), next token 1: KL 0, NLL ln(4/3) each.
    Mean KL ln(3)/4; perplexity ratio exp((ln 4 + ln 4/3 - 2 ln 4/3) / 2) = sqrt(3);
    top-1: A differs, B agrees.
    """
    ln3 = math.log(3)
    reference = [torch.tensor([[ln3, 0.0]]), torch.tensor([[0.0, ln3]])]
    candidate = [torch.tensor([[0.0, ln3]]), torch.tensor([[0.0, ln3]])]
    scores = compare_replies(reference, candidate, [(0,), (1,)])
    assert scores["reply_top1"] == pytest.approx(0.5)
    assert scores["reply_kl"] == pytest.approx(ln3 / 4)
    assert scores["ppl_ratio"] == pytest.approx(math.sqrt(3))
    assert scores["reference_ppl"] == pytest.approx(4 / 3)
    assert scores["candidate_ppl"] == pytest.approx(math.sqrt(4 * 4 / 3))
    assert scores["reply_positions"] == 2


def test_identical_models_score_a_ratio_of_one_and_padded_vocabularies_are_trimmed() -> None:
    generator = torch.Generator().manual_seed(0)
    reference = [torch.randn(5, 7, generator=generator), torch.randn(3, 7, generator=generator)]
    # llama.cpp may pad the vocabulary: extra columns are not compared
    padded = [torch.cat([r, torch.full((r.shape[0], 2), -50.0)], -1) for r in reference]
    scores = compare_replies(reference, padded, [(0, 1, 2, 3, 4), (6, 5, 4)])
    assert scores["ppl_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert scores["reply_kl"] == pytest.approx(0.0, abs=1e-12)
    assert scores["reply_top1"] == 1.0
    assert compare_replies([], [], []) == {}


def _example(ids: list[int], supervised: range) -> TokenizedExample:
    labels = [i if n in supervised else IGNORE_INDEX for n, i in enumerate(ids)]
    return TokenizedExample(input_ids=tuple(ids), labels=tuple(labels))


def test_scored_positions_are_those_that_predict_a_reply_token() -> None:
    # prompt 0..4, reply tokens at 5..8, a trailing token after the reply
    example = _example([10, 11, 12, 13, 14, 20, 21, 22, 23, 30], range(5, 9))
    text = FidelityText.from_examples([example], max_positions=100, source="t")
    assert text.rows == ((4, 5, 6, 7),)  # position t predicts token t + 1
    assert text.targets == ((20, 21, 22, 23),)
    assert text.ids == ((10, 11, 12, 13, 14, 20, 21, 22),)  # cut after the last scored row
    assert text.positions == 4 and text.source == "t"


def test_position_budget_per_text_and_in_all() -> None:
    examples = [_example(list(range(100 * k, 100 * k + 40)), range(10, 40)) for k in range(5)]
    capped = FidelityText.from_examples(examples, max_positions=1000, source="t", max_per_text=6)
    assert [len(r) for r in capped.rows] == [6] * 5
    for rows in capped.rows:  # spread evenly over the 30 reply positions 9..38
        assert rows == (9, 14, 19, 24, 29, 34)
    small = FidelityText.from_examples(examples, max_positions=45, source="t")
    assert small.positions == 45 and [len(r) for r in small.rows] == [30, 15]
    again = FidelityText.from_examples(examples, max_positions=45, source="t")
    assert again == small  # the seeded order is stable
    none = FidelityText.from_examples([_example([1, 2, 3], range(0))], max_positions=9, source="t")
    assert none.positions == 0 and none.ids == ()


def _agreement(**replies: Any) -> Agreement:
    return Agreement(
        top1=0.9,
        top1_within_tie=0.97,
        tie_tolerance=0.1,
        top1_last=1.0,
        max_abs_logit_diff=1.0,
        mean_kl=0.01,
        positions=100,
        **replies,
    )


def test_gates_are_on_perplexity_ratio_and_kl_and_top1_only_on_request() -> None:
    config = ExportConfig()
    good = _agreement(reply_top1=0.87, reply_kl=0.05, ppl_ratio=1.05, reply_positions=1024)
    assert gate_problems("Q4_K_M", good, config) == []
    broken = _agreement(reply_top1=0.02, reply_kl=6.0, ppl_ratio=480.0, reply_positions=1024)
    problems = gate_problems("Q4_K_M", broken, config)
    assert len(problems) == 2
    assert "perplexity ratio 480.0000 > 1.2" in problems[0]
    assert "reply KL 6 nats > 0.15" in problems[1]
    assert gate_problems("F16", good, config)  # F16 must be identical: 1.05 fails
    # top-1 (probe, tie-aware 0.97) is gated only where min_agreement names the type
    strict = ExportConfig(min_agreement={"q4_k_m": 0.98})
    assert gate_problems("Q4_K_M", good, strict) == [
        "GGUF Q4_K_M top-1 agreement 0.9700 (raw 0.9000, ties under 0.1 nats allowed) < 0.98 "
        "(min_agreement)"
    ]
    old = ExportConfig(min_agreement=DEFAULT_MIN_AGREEMENT)
    assert old.threshold("Q4_K_M") == 0.8 and ExportConfig().threshold("Q4_K_M") == 0.0


def test_a_gguf_parity_row_carries_its_limits_and_every_failed_gate() -> None:
    config = ExportConfig()
    good = _agreement(reply_top1=0.87, reply_kl=0.05, ppl_ratio=1.05, reply_positions=1024)
    row = gguf_row("Q4_K_M", good, config, extra=[])
    assert (row.artefact, row.kind, row.passed, row.problems) == ("gguf Q4_K_M", "gguf", True, ())
    assert row.limits == {
        "min_top1_within_tie": 0.0,
        "max_ppl_ratio": DEFAULT_MAX_PPL_RATIO["Q4_K_M"],
        "max_reply_kl": config.reply_kl_limit("Q4_K_M"),
    }
    stops = ["GGUF F16 runs past EOS in llama.cpp's chat path on probes [2] ..."]
    failed = gguf_row("F16", good, config, extra=stops)
    assert not failed.passed
    assert failed.problems == (*gate_problems("F16", good, config), *stops)
    entry = failed.to_dict()
    assert entry["passed"] is False and entry["problems"] == list(failed.problems)
    assert entry["ppl_ratio"] == 1.05 and entry["kind"] == "gguf"


def test_gate_limits_defaults_and_overrides() -> None:
    config = ExportConfig(max_ppl_ratio={"Q4_K_M": 1.05}, max_reply_kl={"Q8_0": 0.005})
    assert config.ppl_ratio_limit("Q4_K_M") == 1.05
    assert config.ppl_ratio_limit("Q8_0") == DEFAULT_MAX_PPL_RATIO["Q8_0"]
    assert config.reply_kl_limit("Q8_0") == 0.005
    assert ExportConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_ppl_ratio": {"Q4_KM": 1.1}}, "unknown GGUF type 'Q4_KM' \\(did you mean 'Q4_K_M'"),
        ({"max_ppl_ratio": {"Q4_K_M": 0.9}}, "Q4_K_M: 0.9 lies outside \\[1, 100\\]"),
        ({"max_reply_kl": {"Q8_0": "low"}}, "'low' is not a number"),
        ({"min_agreement": {"Q4_K_M": 1.01}}, "lies outside \\[0, 1\\]"),
        ({"imatrix": "yes"}, "set it to true, false or 'auto'"),
        ({"imatrix": True, "gguf_types": ["F16", "Q8_0"]}, "add one \\(e.g. 'Q4_K_M'\\)"),
        ({"fidelity_positions": 0}, "fidelity_positions"),
    ],
)
def test_config_rejects_bad_fidelity_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExportConfig.from_dict(settings)


def test_imatrix_types_follow_the_setting() -> None:
    assert ExportConfig().imatrix_types == ("Q4_K_M",)
    types = ("F16", "Q8_0", "Q6_K", "Q4_K_M")
    assert ExportConfig(gguf_types=types, imatrix=True).imatrix_types == ("Q6_K", "Q4_K_M")
    assert ExportConfig(gguf_types=types, imatrix=False).imatrix_types == ()
    assert ExportConfig(formats=("adapter",)).imatrix_types == ()


def test_a_broken_gguf_fails_the_default_gates(
    exported: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An F16 file written without the Q/K permutation loads and runs in llama.cpp but
    predicts the held-out replies worse than the merged model: the perplexity-ratio and KL
    gates fire, while the correct F16 file passes them."""
    import medlora.export._gguf as gguf_module
    from medlora._hub import load_tokenizer
    from medlora.data import ClinicalDataset
    from medlora.export import hf_logits, llama_cpp_logits, write_gguf
    from medlora.export._merge import load_upcast
    from medlora.export._parity import compare

    tokenizer = load_tokenizer(exported.merged_dir)
    held = ClinicalDataset.default().split(test_size=0.1, seed=0)[1]
    text = FidelityText.from_examples(
        held.tokenize(tokenizer, max_seq_len=384), max_positions=256, source="held-out"
    )
    reference = hf_logits(load_upcast(exported.merged_dir), text.ids, text.rows)
    plan = gguf_module._plan

    def unpermuted(*args: Any, **kwargs: Any) -> Any:
        import dataclasses

        return [dataclasses.replace(p, permute_heads=0) for p in plan(*args, **kwargs)]

    monkeypatch.setattr(gguf_module, "_plan", unpermuted)
    broken = write_gguf(exported.merged_dir, tmp_path / "broken-F16.gguf", outtype="F16")
    monkeypatch.undo()
    config = ExportConfig()
    for path, fails in ((exported.gguf_files["F16"], False), (broken, True)):
        candidate = llama_cpp_logits(path, text.ids, text.rows)
        probe = compare(reference, candidate)  # shapes only: any Agreement will do
        agreement = Agreement(
            **{**probe.to_dict(), **compare_replies(reference, candidate, text.targets)}
        )
        problems = gate_problems("F16", agreement, config)
        assert bool(problems) is fails, (path.name, agreement)
        assert agreement.ppl_ratio is not None and agreement.reply_kl is not None
        if fails:  # measured 1.037 and 0.04 nats (a 2-layer model leans little on attention)
            assert agreement.ppl_ratio > 1.02 and agreement.reply_kl > 0.01, agreement
            assert "perplexity ratio" in problems[0] and "reply KL" in problems[1]
        else:
            assert abs(agreement.ppl_ratio - 1) < 1e-4 and agreement.reply_kl < 1e-5, agreement


def test_run_text_warns_only_when_it_must_stand_in(tiny_model_dir: Path) -> None:
    """A run trained on in-memory records cannot be rebuilt: the embedded records stand in with
    a warning, unless both held-out and calibration records are given (then nothing of the
    run's is needed and nothing is said)."""
    import warnings

    from transformers import AutoTokenizer

    from medlora import ClinicalDataset, RunRecord
    from medlora.export._fidelity import run_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = {"model": str(tiny_model_dir), "max_seq_len": 128}
    info = RunRecord(config=config, data_fingerprint="x")
    train, held = ClinicalDataset.default().split(test_size=0.1, seed=0)
    sizes = {"max_positions": 64, "max_calibration_tokens": 256}
    with pytest.warns(UserWarning, match="embedded synthetic records instead"):
        text = run_text(info, tokenizer, held_out=held, calibration=None, **sizes)
    assert text.calibration_source == "embedded synthetic training records"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = run_text(info, tokenizer, held_out=held, calibration=train, **sizes)
    assert text.fidelity.source == "held-out records (given to the exporter)"
    assert text.calibration_source == "calibration records (given to the exporter)"
