"""vLLM contract on CPU: exported directories hold exactly what vLLM's loader needs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from medlora import MissingDependencyError
from medlora.cli import main
from medlora.serve import check_vllm_contract, vllm_available, vllm_command


def test_merged_and_adapter_meet_the_vllm_contract(exported: Any) -> None:
    assert check_vllm_contract(exported.merged_dir) == []
    assert check_vllm_contract(exported.adapter_dir) == []
    config = json.loads((exported.merged_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert not list(exported.merged_dir.glob("*.bin"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_broken_merged_directory_lists_every_problem(exported: Any, tmp_path: Path) -> None:
    broken = _copy(exported.merged_dir, tmp_path / "merged")
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    config["dtype"] = "int8"
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "tokenizer.model").unlink()
    (broken / "tokenizer.json").unlink()
    (broken / "generation_config.json").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"pickle")
    problems = "\n".join(check_vllm_contract(broken))
    for expected in (
        "architectures",
        "dtype",
        "no tokenizer",
        "generation_config.json",
        "pickle weights",
    ):
        assert expected in problems, problems


def test_dtype_mismatch_between_config_and_weights(exported: Any, tmp_path: Path) -> None:
    broken = _copy(exported.merged_dir, tmp_path / "merged")
    config = json.loads((broken / "config.json").read_text())
    key = "dtype" if "dtype" in config else "torch_dtype"
    config[key] = "float32" if config[key] != "float32" else "float16"
    (broken / "config.json").write_text(json.dumps(config))
    assert any("weights hold" in p for p in check_vllm_contract(broken))


def test_a_broken_adapter_lists_every_problem(exported: Any, tmp_path: Path) -> None:
    broken = _copy(exported.adapter_dir, tmp_path / "adapter")
    config = json.loads((broken / "adapter_config.json").read_text())
    config["modules_to_save"] = ["lm_head"]
    config["target_modules"] = ["q_proj", "lm_head"]
    config["use_dora"] = True
    (broken / "adapter_config.json").write_text(json.dumps(config))
    problems = "\n".join(check_vllm_contract(broken))
    for expected in ("modules_to_save", "lm_head", "DoRA"):
        assert expected in problems, problems
    assert check_vllm_contract(tmp_path / "missing") == [
        f"{tmp_path / 'missing'} is not a directory"
    ]


def test_vllm_commands(exported: Any) -> None:
    merged = vllm_command(exported.merged_dir, port=8001, api_key="k", name="clinical")
    assert merged[:3] == ["vllm", "serve", str(exported.merged_dir.resolve())]
    assert merged[3:5] == ["--served-model-name", "clinical"]
    assert merged[-4:] == ["--port", "8001", "--api-key", "k"]
    adapter = vllm_command(exported.adapter_dir, name="clinical")
    base = json.loads((exported.adapter_dir / "adapter_config.json").read_text())
    assert adapter[2] == base["base_model_name_or_path"]
    assert adapter[3:6] == [
        "--enable-lora",
        "--lora-modules",
        f"clinical={exported.adapter_dir.resolve()}",
    ]
    assert "--max-lora-rank" in adapter


@pytest.mark.skipif(vllm_available(), reason="vLLM is installed here")
def test_cli_prints_the_command_then_names_the_install_line(
    exported: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(exported.adapter_dir), "--print-only"]) == 0
    assert capsys.readouterr().out.startswith("vllm serve ")
    assert main(["serve", str(exported.merged_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("vllm serve ")
    assert "pip install 'medlora[vllm]'" in captured.err
    with pytest.raises(MissingDependencyError):
        from medlora.serve import exec_vllm

        exec_vllm(vllm_command(exported.merged_dir))


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_serves_the_merged_directory(exported: Any, free_port: int) -> None:
    if not vllm_available():
        pytest.skip("vLLM is not installed")
    command = [
        sys.executable,
        "-m",
        "medlora.cli",
        "serve",
        str(exported.merged_dir),
        "--port",
        str(free_port),
        "--name",
        "clinical",
    ]
    proc = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/v1/models") as r:
                    assert json.load(r)["data"][0]["id"] == "clinical"
                    break
            except OSError:
                time.sleep(2)
        else:
            pytest.fail("vLLM did not come up in 600 s")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
