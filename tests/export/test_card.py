"""The model card's evaluation section is added once and replaced on a re-run."""

from __future__ import annotations

from medlora._template import ZEPHYR_CHAT_TEMPLATE
from medlora.export._card import ollama_modelfile, with_evaluation


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


def test_modelfile_writes_the_zephyr_template_and_leaves_others_to_ollama() -> None:
    zephyr = ollama_modelfile("m-Q4_K_M.gguf", ZEPHYR_CHAT_TEMPLATE)
    assert zephyr.startswith("FROM ./m-Q4_K_M.gguf\nTEMPLATE ")
    assert 'PARAMETER stop "</s>"' in zephyr
    # The same template without its leading BOS (TinyLlama-1.1B-Chat's layout) is Zephyr too.
    no_bos = ZEPHYR_CHAT_TEMPLATE.removeprefix("{{ bos_token }}")
    assert ollama_modelfile("m.gguf", no_bos) == ollama_modelfile("m.gguf", ZEPHYR_CHAT_TEMPLATE)
    llama2 = "{% for m in messages %}{{ bos_token + '[INST] ' + m['content'] }}{% endfor %}"
    other = ollama_modelfile("m.gguf", llama2)
    assert "TEMPLATE" not in other.replace("# No TEMPLATE", "")
    assert other.startswith("FROM ./m.gguf\n") and 'PARAMETER stop "</s>"' in other
    # It stops on what the template ends a reply with (medlora.data.stop_tokens), not on </s>.
    chatml = ollama_modelfile("m.gguf", llama2, stops=("<|im_end|>",))
    assert 'PARAMETER stop "<|im_end|>"' in chatml and "</s>" not in chatml
    llama3 = ollama_modelfile("m.gguf", llama2, stops=("<|end_of_text|>", "<|eot_id|>"))
    assert 'PARAMETER stop "<|end_of_text|>"\nPARAMETER stop "<|eot_id|>"' in llama3
