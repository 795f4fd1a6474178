"""The same evaluation on base, adapter, merged and GGUF: the fine-tune helps, export keeps it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medlora.cli import main
from medlora.eval import EvalConfig, compare_models, evaluate_model, evaluation_table_markdown
from medlora.eval._cli import held_out_dataset, models_of_export
from medlora.serve import load

SCORING = EvalConfig(tasks=("perplexity", "multiple_choice"))
MARGIN = EvalConfig(tasks=("perplexity", "multiple_choice"), max_records=16)


@pytest.mark.slow
def test_trained_adapter_beats_the_base_on_perplexity_and_accuracy(
    mc_run: Any, tmp_path: Path
) -> None:
    """Measured (300 steps on 280 records; 120 held-out questions from other patients,
    7,415 assistant tokens): perplexity 44.1 -> 1.63, multiple-choice accuracy 0.275 -> 0.667
    (acc_norm 0.258 -> 0.650). Chance is 0.25; 0.667 on 120 questions is 11 standard errors
    above it."""
    result, held_out, seconds = mc_run
    report = compare_models(
        {"base": result.base_model, "adapter": result.adapter_dir},
        held_out,
        tmp_path / "eval",
        SCORING,
    )
    base, adapter = report.rows["base"], report.rows["adapter"]
    print(
        f"\nMC run: {result.steps} steps in {seconds:.0f} s; held-out MC questions "
        f"{int(base['mc_n'])}, assistant tokens {int(base['perplexity_tokens'])}"
    )
    print(report.markdown())
    assert base["mc_n"] >= 100
    assert adapter["perplexity"] < 0.2 * base["perplexity"]
    assert adapter["mc_acc"] >= base["mc_acc"] + 0.2
    assert adapter["mc_acc"] >= 0.45  # chance 0.25, base 0.275
    assert {p.name for p in (tmp_path / "eval").iterdir()} >= {"eval.md", "eval.json", "eval.png"}
    assert (tmp_path / "eval" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["rows"]["adapter"]["mc_n"]


def test_gguf_q8_0_scores_within_margin_of_the_merged_model(exported: Any) -> None:
    held_out = held_out_dataset(exported.out_dir)
    merged = load(exported.merged_dir)
    gguf = load(exported.gguf_files["Q8_0"], n_ctx=1024)
    try:
        hf_row = evaluate_model(merged, held_out, MARGIN)
        q8_row = evaluate_model(gguf, held_out, MARGIN)
    finally:
        gguf.close()
    print(f"\nmerged {hf_row}\nQ8_0   {q8_row}")
    assert q8_row["perplexity_tokens"] == hf_row["perplexity_tokens"]  # same tokenization
    assert q8_row["perplexity"] == pytest.approx(hf_row["perplexity"], rel=0.01)
    assert abs(q8_row["mc_acc"] - hf_row["mc_acc"]) <= 1 / hf_row["mc_n"] + 1e-9


def test_backends_score_the_same_token_ids_alike(exported: Any) -> None:
    text = "<|user|>\nWhat is the first test for pneumonia?</s>\n<|assistant|>\nChest X-ray"
    with load(exported.merged_dir) as merged:
        ids = merged.tokenize(text)
        reference = merged.logprobs(ids)
        continuation = merged.loglikelihood(text[: -len("Chest X-ray")], "Chest X-ray")
    for path, tolerance in (
        (exported.gguf_files["F16"], 0.01),
        (exported.gguf_files["Q8_0"], 0.05),
    ):
        with load(path) as gguf:
            got = gguf.logprobs(ids)
            assert max(abs(a - b) for a, b in zip(got, reference, strict=True)) < tolerance
            assert gguf.loglikelihood(text[: -len("Chest X-ray")], "Chest X-ray").n_tokens == (
                continuation.n_tokens
            )
    with load(exported.adapter_dir) as adapter:  # float32 base + unmerged LoRA
        assert len(adapter.logprobs(ids)) == len(ids) - 1


def test_cli_eval_writes_table_json_and_chart(
    exported: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = models_of_export(exported.out_dir)
    assert set(models) == {"base", "adapter", "merged", "gguf F16", "gguf Q8_0", "gguf Q4_K_M"}
    out = tmp_path / "eval"
    argv = [
        "eval",
        str(exported.out_dir),
        "--out",
        str(out),
        "--max-records",
        "2",
        "--max-generation-records",
        "1",
        "--max-new-tokens",
        "4",
    ]
    assert main(argv) == 0
    table = (out / "eval.md").read_text()
    assert table.splitlines()[0].startswith("| model | perplexity")
    for name in models:
        assert f"| {name} |" in table
    assert "ROUGE-L F1" in table and "exact match" in table
    assert table in capsys.readouterr().out
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert rows["gguf Q8_0"]["generation_n"] == 1
    card = (exported.out_dir / "README.md").read_text()
    assert card.count("## Evaluation") == 1
    assert table.strip() in card
    assert card.index("## Evaluation") < card.index("## Export parity")


def test_table_markdown_by_hand() -> None:
    table = evaluation_table_markdown(
        {"base": {"perplexity": 9.5, "mc_acc": 0.25, "mc_n": 4}, "adapter": {"mc_acc": 0.75}}
    )
    assert table.splitlines()[:4] == [
        "| model | perplexity (lower is better) | multiple-choice acc |",
        "|---|---:|---:|",
        "| base | 9.500 | 0.250 |",
        "| adapter | - | 0.750 |",
    ]
    assert "multiple-choice questions 4" in table
