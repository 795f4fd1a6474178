"""Both backends ``load`` returns satisfy the :class:`~medlora.LoadedModel` protocol: for mypy
(concrete ``str`` / ``Iterator[str]`` returns, checked on a snippet) and at run time."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medlora import LoadedModel, load
from medlora.serve import GGUFModel, HFModel

ROOT = Path(__file__).resolve().parents[2]
CHAT = [{"role": "user", "content": "What is asthma?"}]

TYPED = """
from collections.abc import Iterator

from medlora import LoadedModel
from medlora.serve import GGUFModel, HFModel


def as_loaded(hf: HFModel, gguf: GGUFModel) -> list[LoadedModel]:
    return [hf, gguf]


def use(model: LoadedModel, gguf: GGUFModel) -> tuple[str, Iterator[str], str]:
    text: str = model.generate("Hi", max_new_tokens=4, stop=["\\n"])
    pieces: Iterator[str] = model.chat([{"role": "user", "content": "Hi"}], stream=True)
    return text, pieces, gguf.chat([{"role": "user", "content": "Hi"}], temperature=0.5)


def wrong(model: LoadedModel, hf: HFModel) -> None:
    a: int = model.generate("Hi")  # line 19
    b: str = hf.chat([], stream=True)  # line 20
    hf.generate("Hi", max_tokens=4)  # line 21
"""


def test_mypy_sees_both_backends_as_loaded_models_with_concrete_returns(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pytest.importorskip("mypy")
    if request.config.getoption("--fast"):
        pytest.skip("mypy follows medlora into torch (~15 s without a warm cache): not fast")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(TYPED)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), snippet],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    assert lines == [19, 20, 21], run.stdout  # nothing in as_loaded/use; each wrong line
    assert 'expression has type "str", variable has type "int"' in run.stdout
    assert 'expression has type "Iterator[str]", variable has type "str"' in run.stdout


def _behaves_as_a_loaded_model(model: Any) -> None:
    assert isinstance(model, LoadedModel)
    text = model.generate("The patient", max_new_tokens=6)
    pieces = model.generate("The patient", max_new_tokens=6, stream=True)
    assert isinstance(text, str) and isinstance(pieces, Iterator)
    assert "".join(pieces) == text
    reply = model.chat(CHAT, max_new_tokens=6)
    assert (
        isinstance(reply, str) and "".join(model.chat(CHAT, max_new_tokens=6, stream=True)) == reply
    )
    with pytest.raises(TypeError, match="max_tokens"):
        model.generate("The patient", max_tokens=6)


def test_an_hf_model_behaves_as_a_loaded_model(random_model_dir: Path) -> None:
    with load(random_model_dir) as model:
        assert type(model) is HFModel
        _behaves_as_a_loaded_model(model)


def test_a_gguf_model_behaves_as_a_loaded_model(exported: Any) -> None:
    with load(exported.gguf_files["Q8_0"], n_threads=1) as model:
        assert type(model) is GGUFModel
        _behaves_as_a_loaded_model(model)


def test_an_unknown_generation_keyword_is_a_type_error_not_ignored() -> None:
    """``generate``/``chat`` take their options as ``**options``: a typo such as OpenAI's
    ``max_tokens`` must still fail, naming the keywords there are."""
    from medlora.serve._load import _sampling

    assert _sampling({"max_new_tokens": 3, "stop": "\n"}).stops == ["\n"]
    with pytest.raises(TypeError, match=r"max_tokens; .*max_new_tokens, temperature, stop, seed"):
        _sampling({"max_tokens": 3})  # type: ignore[typeddict-unknown-key]
