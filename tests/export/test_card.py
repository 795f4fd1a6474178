"""The model card's evaluation section is added once and replaced on a re-run."""

from __future__ import annotations

from medlora.export._card import with_evaluation


def test_evaluation_section_is_inserted_then_replaced() -> None:
    card = "# m\n\n## Training\n\nx\n\n## Export parity\n\ny\n"
    first = with_evaluation(card, "| model | perplexity |\n|---|---:|\n| a | 2.000 |")
    assert first.index("## Evaluation") < first.index("## Export parity")
    assert "| a | 2.000 |" in first
    second = with_evaluation(first, "| model | perplexity |\n|---|---:|\n| b | 3.000 |")
    assert second.count("## Evaluation") == 1
    assert "| b | 3.000 |" in second and "| a | 2.000 |" not in second
    assert second.endswith("## Export parity\n\ny\n")
    assert with_evaluation("# m\n", "T").endswith(
        "## Evaluation\n\n"
        "Held-out records scored the same way for "
        "every model (`medlora eval`):\n\nT\n\n"
    )
