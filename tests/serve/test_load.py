"""``medlora.load`` fast paths: shared-context scoring, batched replies, the 4-bit base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medlora import LoadedModel, QuantizationConfig, load

QUESTION = [
    {"role": "system", "content": "You are a careful clinical assistant."},
    {"role": "user", "content": "A 40-year-old has fever and cough. Diagnosis?\nA. Pneumonia"},
]
OPTIONS = ["A. Pneumonia", "B. Asthma", "C. Acute decompensated heart failure with edema"]
CONVERSATIONS = [
    [{"role": "user", "content": "What is asthma?"}],
    [{"role": "user", "content": "Summarize: three days of cough, fever and chest pain."}],
    [{"role": "user", "content": "Hi"}],
]


def test_shared_context_scores_equal_one_by_one(tiny_model_dir: Path) -> None:
    with load(tiny_model_dir) as model:
        context = model.render(QUESTION, generation_prompt=True)
        fast = model.loglikelihoods(context, OPTIONS)
        slow = [model.loglikelihood(context, option) for option in OPTIONS]
        # a continuation whose tokens merge with the context's falls back to one by one
        fast += model.loglikelihoods("Chest X", ["-ray", "ray"])
        slow += [model.loglikelihood("Chest X", c) for c in ("-ray", "ray")]
    for a, b in zip(fast, slow, strict=True):
        assert a.n_tokens == b.n_tokens and a.greedy == b.greedy
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_load_returns_a_loaded_model(tiny_model_dir: Path) -> None:
    """``load`` is typed as returning the :class:`LoadedModel` protocol (mypy checks that
    ``HFModel`` and ``GGUFModel`` satisfy it); at run time too the object has its members."""
    with load(tiny_model_dir) as model:
        assert isinstance(model, LoadedModel)
        reply: str = model.chat(CONVERSATIONS[0], max_new_tokens=4)
        pieces = list(model.chat(CONVERSATIONS[0], max_new_tokens=4, stream=True))
    assert "".join(pieces) == reply


def test_gguf_shared_context_scores_equal_one_by_one(exported: Any) -> None:
    with load(exported.gguf_files["Q8_0"], n_threads=1) as model:
        assert isinstance(model, LoadedModel)
        context = model.render(QUESTION, generation_prompt=True)
        fast = model.loglikelihoods(context, OPTIONS)
        slow = [model.loglikelihood(context, option) for option in OPTIONS]
        # replies come from the rendered prompt (training's ids), not the chat handler
        prompts = [model.render(c, generation_prompt=True) for c in CONVERSATIONS[:2]]
        assert model.chat_many(CONVERSATIONS[:2], max_new_tokens=6) == [
            model.generate(p, max_new_tokens=6) for p in prompts
        ]
    for a, b in zip(fast, slow, strict=True):
        assert a.n_tokens == b.n_tokens and a.greedy == b.greedy
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)


def test_batched_replies_equal_one_by_one(tiny_model_dir: Path) -> None:
    with load(tiny_model_dir) as model:
        batched = model.chat_many(CONVERSATIONS, max_new_tokens=12, batch_size=2)
        single = [model.chat(c, max_new_tokens=12) for c in CONVERSATIONS]
    assert batched == single


def test_adapter_on_its_4bit_base(trained_run: Any) -> None:
    from medlora.training._model import count_4bit_linear

    with (
        load(trained_run.adapter_dir) as full,
        load(trained_run.adapter_dir, quantization=QuantizationConfig()) as four_bit,
    ):
        assert count_4bit_linear(four_bit.model) > 0 and count_4bit_linear(full.model) == 0
        ids = full.tokenize(full.render(QUESTION, generation_prompt=True))
        a, b = full.logprobs(ids), four_bit.logprobs(ids)
        assert len(four_bit.chat_many(CONVERSATIONS[:2], max_new_tokens=4)) == 2
    # the 4-bit base differs from the float one by rounding only
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1.0
    assert a != b


@pytest.mark.parametrize(
    ("version", "keyword"),
    [
        ("5.0.0", "past_key_values"),
        ("5.23.0", "past_key_values"),
        ("5.24.0", "cache"),
        ("5.24.0.dev0", "cache"),
        ("5.40.1", "cache"),
        ("6.0.0rc1", "cache"),
    ],
)
def test_kv_cache_keyword_follows_the_transformers_release(version: str, keyword: str) -> None:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (wheels 5.21-5.23 and 5.24
    compared); the keyword is chosen by release, not guessed from a signature."""
    from medlora.serve._load import cache_keyword

    assert cache_keyword(version) == keyword


def test_the_installed_transformers_takes_and_returns_that_keyword(tiny_model_dir: Path) -> None:
    import inspect

    import transformers
    from transformers import LlamaForCausalLM

    from medlora.serve._load import cache_keyword

    key = cache_keyword(transformers.__version__)
    assert key in inspect.signature(LlamaForCausalLM.forward).parameters
    torch = pytest.importorskip("torch")
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    out = model(input_ids=torch.tensor([[1, 5, 9]]), use_cache=True)
    assert out[key] is not None
