"""The deployment guides' shell commands, run against the tiny export (vLLM's only printed,
Ollama's checked structurally: neither runs on this CI)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from serve_helpers import Server, pick_port

from medlora.serve import vllm_command

GUIDES = Path(__file__).resolve().parents[2] / "docs" / "guides"


def shell_lines(page: str) -> list[str]:
    """The command lines of every ```bash block of a guide."""
    text = (GUIDES / page).read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.split("  #")[0].strip() for b in blocks for line in b.splitlines() if line.strip()]


def documented(page: str, prefix: str) -> list[str]:
    return [line for line in shell_lines(page) if line.startswith(prefix)]


def medlora_argv(line: str, replace: dict[str, str]) -> list[str]:
    for old, new in replace.items():
        line = line.replace(old, new)
    args = shlex.split(line)
    assert args[0] == "medlora"
    return [sys.executable, "-m", "medlora.cli", *args[1:]]


def test_llama_cpp_guide_serve_and_curl_commands_work(exported: Any) -> None:
    gguf = exported.gguf_files["Q8_0"]
    port = str(pick_port())
    replace = {
        "exports/laptop/gguf/laptop-Q8_0.gguf": str(gguf),
        "laptop-Q8_0": gguf.stem,
        "8080": port,
        "--n-ctx 2048": "--n-ctx 512",
    }
    (serve,) = documented("deploy-llama-cpp.md", "medlora serve")
    (curl,) = documented("deploy-llama-cpp.md", "curl ")
    server = Server(medlora_argv(serve, replace), int(port))
    try:
        server.wait_ready()
        for old, new in replace.items():
            curl = curl.replace(old, new)
        out = subprocess.run(
            shlex.split(curl), capture_output=True, text=True, timeout=60, check=True
        ).stdout
        reply = json.loads(out)
        assert reply["model"] == gguf.stem or reply["model"].endswith(".gguf")
        assert reply["choices"][0]["message"]["role"] == "assistant"
    finally:
        code, output = server.stop()
    assert code == 0, output


def test_vllm_guide_print_only_commands_print_the_exact_command(exported: Any) -> None:
    replace = {
        "exports/gpu/merged": str(exported.merged_dir),
        "exports/gpu/adapter": str(exported.adapter_dir),
    }
    lines = documented("deploy-vllm.md", "medlora serve")
    assert len(lines) == 2
    for line, path in zip(lines, (exported.merged_dir, exported.adapter_dir), strict=True):
        out = subprocess.run(
            medlora_argv(line, replace), capture_output=True, text=True, timeout=120, check=True
        ).stdout
        assert out.strip() == shlex.join(vllm_command(path, name="clinical", port=8000))


def render_ollama(template: str, **values: str) -> str:
    """Render the subset of Go templates a Modelfile TEMPLATE uses: if/end and fields."""
    text = re.sub(
        r"\{\{ if \.(\w+) \}\}(.*?)\{\{ end \}\}",
        lambda m: m.group(2) if values.get(m.group(1)) else "",
        template,
        flags=re.S,
    )
    return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values.get(m.group(1), ""), text)


def test_ollama_modelfile_matches_the_training_chat_format(exported: Any) -> None:
    from medlora.data import render
    from medlora.serve import load

    modelfile = (exported.out_dir / "gguf" / "Modelfile").read_text()
    source = re.search(r"^FROM (\S+)$", modelfile, flags=re.M)
    assert source and (exported.out_dir / "gguf" / source.group(1)).is_file()
    assert 'PARAMETER stop "</s>"' in modelfile
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, flags=re.S)
    assert template
    model = load(exported.merged_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    prompt = render_ollama(
        template.group(1).split("{{ .Response }}")[0], System="Be brief.", Prompt="Hi?"
    )
    assert prompt == render(model.tokenizer, messages, generation_prompt=True)
    full = render_ollama(template.group(1), System="Be brief.", Prompt="Hi?", Response="Hello.")
    reply = [*messages, {"role": "assistant", "content": "Hello."}]
    assert render(model.tokenizer, reply).startswith(full)
    assert "ollama create clinical-tiny -f Modelfile" in shell_lines("deploy-ollama.md")
