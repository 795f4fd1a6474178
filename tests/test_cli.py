"""The ``medlora`` command over the same objects as the API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from medlora.cli import main


@pytest.mark.heavy
def test_quickstart_runs_the_whole_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "qs"
    assert (
        main(["quickstart", "--tiny", "--out", str(out), "--steps", "12", "--pretrain-steps", "30"])
        == 0
    )
    report = capsys.readouterr().out
    assert "training loss" in report and "held-out loss" in report
    assert "GGUF answer" in report
    assert (out / "export/gguf/export-Q4_K_M.gguf").is_file()
    assert (out / "export/merged/model.safetensors").is_file()
    assert (out / "export/adapter/adapter_model.safetensors").is_file()


def test_train_then_export_from_a_yaml_config(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\noutput_dir: {tmp_path / 'run'}\nmax_steps: 3\n"
        "max_seq_len: 256\nlora:\n  r: 4\n  lora_alpha: 8\n"
    )
    assert main(["train", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "held out  " in printed  # the data report came first
    assert printed.index("records ") < printed.index("held-out loss")
    meta = json.loads((tmp_path / "run/medlora.json").read_text())
    assert meta["config"]["lora"]["r"] == 4
    assert meta["held_out"]["recipe"] == "fraction" and len(meta["held_out"]["fingerprint"]) == 64
    card = meta["data_card"]
    assert card["records"] == meta["train_records"] and sum(card["token_lengths"].values()) > 0
    assert main(["export", str(tmp_path / "run"), "--gguf", "F16"]) == 0
    summary = capsys.readouterr().out
    assert "gguf F16" in summary and "ppl x1.00" in summary and "FAILED" not in summary
    assert "reply positions of the run's held-out records" in summary
    assert (tmp_path / "run/export/gguf/export-F16.gguf").is_file()


def test_train_resume_flag_continues_from_the_latest_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.yaml"
    body = f"model: {tiny_model_dir}\noutput_dir: {tmp_path / 'run'}\nmax_seq_len: 256\n"
    config.write_text(body + "max_steps: 2\nsave_every: 2\n")
    assert main(["train", str(config)]) == 0
    config.write_text(body + "max_steps: 4\nsave_every: 2\n")
    assert main(["train", str(config), "--resume"]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "run/medlora.json").read_text())["metrics"]["steps"] == 4
    assert main(["train", str(config), "--no-resume"]) == 0
    assert "resumed from" not in capsys.readouterr().out


def test_user_errors_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model: m\noutput_dir: o\nmax_step: 3\n")
    assert main(["train", str(config)]) == 2
    assert "Did you mean 'max_steps'" in capsys.readouterr().err


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text: Any = capsys.readouterr().out
    for command in ("quickstart", "train", "export"):
        assert command in text


def test_cli_sets_expandable_segments_unless_the_user_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "bad.yaml"
    config.write_text("model: m\noutput_dir: o\nmax_step: 3\n")
    main(["train", str(config)])  # fails on the config, after the allocator default is set
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    main(["train", str(config)])
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "backend:native")
    main(["train", str(config)])
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def test_data_check_and_report_show_the_card_without_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.jsonl"
    rows = [{"question": f"Dose of drug {i}?", "answer": f"{i} mg", "pid": i % 3} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["data", "check", str(path), "--group-by", "pid"]) == 0
    out = capsys.readouterr().out
    assert "records   6 in 3 groups (qa 6)" in out and "ok: 6 records" in out
    assert main(["data", "report", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 5)[-1])["records"] == 6
    path.write_text(path.read_text() + '{"question": "x", "answer": 3}\n', encoding="utf-8")
    assert main(["data", "check", str(path)]) == 2
    assert "field 'answer'" in capsys.readouterr().err


def test_data_check_of_a_training_config_uses_its_data_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("model: m\noutput_dir: run\ndata:\n  dedup: exact\n  eval: 0.2\n")
    assert main(["data", "check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "removed 0 exact" in out and "0.2 of the groups" in out
