"""AdapterExporter: every artefact reloads and behaves like the trained model."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import pytest
from crash_helpers import COMPLETE, DEAD, leftover, leftovers

from medlora import AdapterExporter, ExportConfig, ExportError
from medlora.export import DEFAULT_MAX_MERGE_KL, DEFAULT_MIN_AGREEMENT
from medlora.export._parity import compare, hf_logits, probe_ids

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
AutoModelForCausalLM = transformers.AutoModelForCausalLM
AutoTokenizer = transformers.AutoTokenizer


def test_export_layout(exported: Any) -> None:
    out = exported.out_dir
    for name in ("README.md", "parity.json", "medlora.json", "gguf/Modelfile"):
        assert (out / name).is_file(), name
    for path in exported.gguf_files.values():
        assert path.with_suffix(".Modelfile").read_text().startswith(f"FROM ./{path.name}\n")
    merged = exported.merged_dir
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == "float16"
    for name in (
        "model.safetensors",
        "tokenizer.model",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        assert (merged / name).is_file(), name
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    generation = json.loads((merged / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    assert set(exported.gguf_files) == {"F16", "Q8_0", "Q4_K_M"}
    assert not list(out.parent.glob(".*partial*"))


def test_merged_reloads_and_matches_the_trained_model(exported: Any, trained_run: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medlora.export._merge import load_trained
    from medlora.training import QuantizationConfig

    tokenizer = AutoTokenizer.from_pretrained(exported.merged_dir)
    ids = probe_ids(tokenizer)
    trained = hf_logits(
        load_trained(trained_run.base_model, trained_run.adapter_dir, QuantizationConfig()), ids
    )
    merged = AutoModelForCausalLM.from_pretrained(exported.merged_dir, dtype=torch.float32)
    agreement = compare(trained, hf_logits(merged, ids))
    # Measured: max |logit diff| 2.8e-3 and mean KL 6e-8 (fp16 storage of the merged
    # weights); top-1 0.982, the flips all at positions whose two best logits lie within that
    # twice that of each other (a flip needs a gap below 2 x max |logit diff|).
    assert agreement.max_abs_logit_diff < 6e-2, agreement
    assert agreement.mean_kl < 1e-5, agreement
    assert agreement.top1 >= 0.97, agreement
    assert agreement.top1_last == 1.0


def test_both_merge_strategies_are_measured(exported: Any) -> None:
    merge = exported.parity["merge"]
    assert set(merge) == {"original", "nf4-roundtrip"}
    chosen = exported.merge_strategy
    assert merge[chosen]["reply_kl"] == min(m["reply_kl"] for m in merge.values())
    assert merge[chosen]["mean_kl"] == min(m["mean_kl"] for m in merge.values())
    # The adapter was trained against dequant(NF4(W)): merging into that copy reproduces the
    # trained model (KL ~1e-12), merging into the original weights does not (KL ~1e-3).
    assert chosen == "nf4-roundtrip"
    assert merge["nf4-roundtrip"]["mean_kl"] < merge["original"]["mean_kl"] / 100
    # Drift of each strategy against its own default bound (DEFAULT_MAX_MERGE_KL).
    # Measured: nf4-roundtrip KL 5.6e-6, max |dlogit| 0.033 (the 4-bit reference computes in
    # bf16), top-1 0.998; original KL 3.3e-3, max |dlogit| 0.61, top-1 0.91.
    assert merge["nf4-roundtrip"]["mean_kl"] < 1e-4
    assert merge["nf4-roundtrip"]["max_abs_logit_diff"] < 0.1
    assert 1e-4 < merge["original"]["mean_kl"] < DEFAULT_MAX_MERGE_KL["original"]
    assert (
        merge["original"]["max_abs_logit_diff"] > 5 * merge["nf4-roundtrip"]["max_abs_logit_diff"]
    )
    assert merge["original"]["top1"] >= 0.85


def test_every_artefact_is_scored_on_held_out_replies(exported: Any) -> None:
    """Reply top-1, KL and perplexity ratio on 1,024 positions inside the assistant replies of
    the run's held-out records, for the merged weights and every GGUF; Q4_K_M quantized with
    the importance matrix. Measured on the fixture (ratio / KL / reply top-1): merged 1.0000 /
    6e-8 / 0.999, F16 1.0000 / 4e-8 / 1.000, Q8_0 1.0004 / 4.5e-5 / 0.992, Q4_K_M 1.0073 /
    2.5e-3 / 0.930 (a 2-layer model, reference perplexity 120: far gentler on 4-bit rounding
    than a real one, see docs/benchmarks.md)."""
    import gguf

    text = exported.parity["fidelity_text"]
    assert text["source"] == "the run's held-out records"
    assert text["positions"] == ExportConfig().fidelity_positions == 1024
    agreements = exported.agreements
    assert list(agreements) == ["merged (nf4-roundtrip)", "gguf F16", "gguf Q8_0", "gguf Q4_K_M"]
    rows = exported.parity_rows
    assert [(row.artefact, row.kind) for row in rows] == [
        ("merged (nf4-roundtrip)", "merged"),
        ("gguf F16", "gguf"),
        ("gguf Q8_0", "gguf"),
        ("gguf Q4_K_M", "gguf"),
    ]
    assert all(row.passed and row.problems == () for row in rows)
    assert rows[0].limits == {"max_mean_kl": DEFAULT_MAX_MERGE_KL["nf4-roundtrip"]}
    assert rows[3].limits["min_top1_within_tie"] == 0.95  # the fixture's min_agreement
    for row in rows:
        assert row.agreement == agreements[row.artefact]
        entry = exported.parity["artefacts"][row.artefact]
        assert entry == row.to_dict() and entry["passed"] is True
        assert {k: entry[k] for k in row.agreement.to_dict()} == row.agreement.to_dict()
    for name, agreement in agreements.items():
        assert agreement.reply_positions == 1024, name
        assert agreement.reference_ppl is not None and agreement.reference_ppl > 1, name
    for name, ratio, kl in (
        ("merged (nf4-roundtrip)", 1e-4, 1e-5),
        ("gguf F16", 1e-4, 1e-5),
        ("gguf Q8_0", 3e-3, 1e-3),
        ("gguf Q4_K_M", 3e-2, 1e-2),
    ):
        agreement = agreements[name]
        assert agreement.ppl_ratio is not None and agreement.reply_kl is not None
        assert abs(agreement.ppl_ratio - 1) < ratio and agreement.reply_kl < kl, name
    assert agreements["gguf Q4_K_M"].imatrix is True
    assert agreements["gguf F16"].imatrix is None and agreements["gguf Q8_0"].imatrix is None
    record = exported.parity["imatrix"]
    assert record["types"] == ["Q4_K_M"] and record["entries"] == 14
    assert record["tokens"] == ExportConfig().imatrix_tokens
    assert record["source"] == "the run's training records"
    fields = gguf.GGUFReader(str(exported.gguf_files["Q4_K_M"])).fields
    assert fields["quantize.imatrix.entries_count"].contents() == 14
    assert "the run's training records" in fields["quantize.imatrix.dataset"].contents()
    card = (exported.out_dir / "README.md").read_text()
    assert "| artefact | reply top-1 | reply KL | perplexity ratio | imatrix " in card
    assert "Q4_K_M were quantized by llama.cpp with an importance matrix" in card


def test_merge_kl_limit_per_strategy() -> None:
    assert ExportConfig().merge_kl_limit("nf4-roundtrip") == 1e-3
    assert ExportConfig().merge_kl_limit("original") == 1e-2
    assert ExportConfig(max_merge_kl=5e-2).merge_kl_limit("original") == 5e-2


def test_f16_gguf_next_token_matches_hf_on_probes(exported: Any) -> None:
    row = exported.parity["artefacts"]["gguf F16"]
    assert row["positions"] > 20 * 10
    assert row["top1_last"] == 1.0  # all 24 probe prompts
    assert row["top1"] >= 0.99
    assert row["max_abs_logit_diff"] < 5e-2


def test_quantized_ggufs_load_and_generate(exported: Any) -> None:
    from medlora.export import open_gguf

    assert exported.parity["artefacts"]["gguf Q8_0"]["top1"] >= 0.95
    llm = open_gguf(exported.gguf_files["Q4_K_M"], n_ctx=512)
    try:
        reply = llm.create_chat_completion(
            messages=[{"role": "user", "content": "What are the signs of pneumonia?"}],
            max_tokens=16,
            temperature=0.0,
        )
    finally:
        llm.close()
    assert reply["choices"][0]["message"]["content"].strip()
    assert exported.gguf_files["Q4_K_M"].stat().st_size < exported.gguf_files["F16"].stat().st_size


def test_model_card_and_modelfile(exported: Any) -> None:
    card = (exported.out_dir / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0")
    assert "Not a medical device" in card
    assert "gguf Q4_K_M" in card and "merged (nf4-roundtrip)" in card
    assert "builds the training token ids on 8/8 probe conversations" in card
    assert "| F16 | 6/6 (merged: 6) | 6/6 | 0 |" in card
    modelfile = (exported.out_dir / "gguf/Modelfile").read_text()
    assert modelfile.startswith("FROM ./clinical-tiny-Q4_K_M.gguf")
    assert 'PARAMETER stop "</s>"' in modelfile


def test_failed_parity_raises_and_keeps_the_previous_export(
    trained_run: Any, tmp_path: Path
) -> None:
    out = tmp_path / "exp"
    AdapterExporter(trained_run, ExportConfig(formats=("adapter",))).export(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    impossible = ExportConfig(
        gguf_types=("Q4_K_M",), max_reply_kl={"Q4_K_M": 0.0}, min_agreement={"Q4_K_M": 1.0}
    )
    with pytest.raises(ExportError, match=r"Q4_K_M held-out reply KL .* > 0 ") as info:
        AdapterExporter(trained_run, impossible).export(out)
    assert "Q4_K_M top-1 agreement" in str(info.value)  # min_agreement still gates
    assert "gguf Q4_K_M" in info.value.measurements["artefacts"]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]


@pytest.mark.parametrize("on_failure", ["warn", "ignore"])
def test_lenient_on_failure_keeps_the_export(
    trained_run: Any, tmp_path: Path, on_failure: Literal["warn", "ignore"]
) -> None:
    lenient = ExportConfig(
        gguf_types=("Q4_K_M",),
        max_ppl_ratio={"Q4_K_M": 1.0},
        max_reply_kl={"Q4_K_M": 0.0},
        on_failure=on_failure,
        formats=("gguf", "gguf-adapter"),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = AdapterExporter(trained_run, lenient).export(tmp_path / "exp")
    failed = [w for w in caught if "parity check failed" in str(w.message)]
    assert len(failed) == (1 if on_failure == "warn" else 0)
    measured = json.loads((tmp_path / "exp/parity.json").read_text())["artefacts"]
    assert measured["gguf Q4_K_M"]["reply_kl"] > 0.0  # measured either way
    assert result.merged_dir is None and result.adapter_dir is None
    assert result.gguf_files["Q4_K_M"].is_file()
    lora = tmp_path / "exp/gguf/exp-lora-F32.gguf"
    assert lora.is_file() and "lora-F32" in (tmp_path / "exp/README.md").read_text()


def test_interrupted_export_leaves_no_final_directory(
    trained_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medlora.export._exporter as exporter

    def killed(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "write_gguf", killed)
    with pytest.raises(KeyboardInterrupt):
        AdapterExporter(trained_run).export(tmp_path / "exp")
    assert os.listdir(tmp_path) == []


def test_export_killed_half_way_leaves_the_previous_export(
    trained_run: Any, tmp_path: Path
) -> None:
    """SIGKILL (no cleanup handlers run) in the middle of writing the merged weights and GGUF."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "exp"
    AdapterExporter(trained_run, ExportConfig(formats=("adapter",))).export(out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code = (
        "import sys; from medlora import AdapterExporter; "
        "AdapterExporter(sys.argv[1]).export(sys.argv[2])"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(trained_run.run_dir), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    try:
        while not list(tmp_path.glob(".exp.*.partial/merged/*.safetensors")):
            assert child.poll() is None, "the export finished before it could be killed"
            assert time.monotonic() < deadline, "the export never reached the merged weights"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing of the killed export under the final name
    # Only the killed export's own temporary directory is left beside it.
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "exp")
    assert len(leftovers) == 1 and leftovers[0].endswith(".partial"), leftovers


def test_export_restores_the_run_adapter_and_removes_leftovers(
    trained_run: Any, tmp_path: Path
) -> None:
    """Killed writes, export side. Before, a run killed between the two renames
    of its adapter swap was refused ("not a finished medlora training run"), and what killed
    exports left beside the output stayed forever."""
    run = shutil.copytree(trained_run.run_dir, tmp_path / "run")
    adapter = run / "adapter"
    new = shutil.copytree(adapter, run / f".adapter.{DEAD}.0badc0de.partial")
    (new / COMPLETE).write_text("")
    adapter.rename(run / f".adapter.{DEAD}.1badc0de.old")
    out = tmp_path / "exports" / "exp"
    out.parent.mkdir()
    leftover(out.parent, "exp", "partial", complete=False)
    (out.parent / f".exp.gguf.{DEAD}.2badc0de.partial").write_bytes(b"GGUF")

    result = AdapterExporter(run, ExportConfig(formats=("adapter",))).export(out)
    weights = "adapter_model.safetensors"
    assert (adapter / weights).read_bytes() == (trained_run.adapter_dir / weights).read_bytes()
    assert (result.adapter_dir / weights).read_bytes() == (adapter / weights).read_bytes()
    assert leftovers(run) == [] and leftovers(out.parent) == []


def test_a_base_gguf_cannot_hold_is_refused_before_merging(
    trained_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RoPE and tokenizer are checked from the files before any model is loaded."""
    import shutil

    import medlora.export._exporter as exporter

    base = Path(shutil.copytree(trained_run.base_model, tmp_path / "base"))
    config = json.loads((base / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (base / "config.json").write_text(json.dumps(config))
    run = Path(shutil.copytree(trained_run.run_dir, tmp_path / "run"))
    info = json.loads((run / "medlora.json").read_text())
    info["base_model"] = str(base)
    (run / "medlora.json").write_text(json.dumps(info))

    def merge_started(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the export loaded a model before refusing the base")

    monkeypatch.setattr(exporter, "load_trained", merge_started)
    with pytest.raises(ExportError, match="RoPE scaling 'yarn' cannot be exported to GGUF"):
        AdapterExporter(run).export(tmp_path / "exp")
    assert not (tmp_path / "exp").exists()


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not a finished medlora training run"):
        AdapterExporter(tmp_path).export(tmp_path / "out")


def test_issue_thresholds_on_the_trained_model(exported: Any) -> None:
    """The issue's bars (F16 100%, Q8_0 >= 99%, Q4_K_M >= 95%), enforced by the export itself
    (the fixture exports with on_failure="raise", the defaults for F16 and Q8_0 and
    ``min_agreement={"Q4_K_M": 0.95}``) and asserted here.

    Measured on the fixture (1,311 probe positions), tie-aware / raw top-1: F16 1.000 / 0.999,
    Q8_0 1.000 / 0.978, Q4_K_M 0.982 / 0.929. Raw flips sit at positions where the reference's
    two best tokens lie within 0.1 nats (the fp16 merged directory alone flips 1.8% of
    positions against the fp32 trained model at a max |logit diff| of 0.003).
    """
    artefacts = exported.parity["artefacts"]
    for qtype, bar in (("F16", 1.0), ("Q8_0", 0.99), ("Q4_K_M", 0.95)):
        row = artefacts[f"gguf {qtype}"]
        assert row["top1_within_tie"] >= bar, (qtype, row)
        assert row["tie_tolerance"] == 0.1
        assert row["top1"] <= row["top1_within_tie"]
    assert DEFAULT_MIN_AGREEMENT["F16"] == 1.0 and DEFAULT_MIN_AGREEMENT["Q8_0"] == 0.99
    # Raw agreement, reported beside it: lower bounds with margin under the measured values.
    assert artefacts["gguf F16"]["top1"] >= 0.995
    assert artefacts["gguf Q8_0"]["top1"] >= 0.96
    assert artefacts["gguf Q4_K_M"]["top1"] >= 0.9
    for qtype in ("F16", "Q8_0"):
        assert artefacts[f"gguf {qtype}"]["top1_last"] == 1.0, qtype
    assert artefacts["gguf Q4_K_M"]["top1_last"] >= 23 / 24


def test_tie_aware_agreement_by_hand() -> None:
    import torch

    reference = [torch.tensor([[2.0, 1.95, 0.0], [3.0, 0.0, 2.5], [0.0, 1.0, 0.0]])]
    # Position 0: the candidate picks token 1, 0.05 nats under the reference's best: a tie.
    # Position 1: it picks token 2, 0.5 nats under: a disagreement. Position 2: the same pick.
    candidate = [torch.tensor([[1.9, 2.0, 0.0], [2.0, 0.0, 2.5], [0.0, 1.0, 0.0]])]
    agreement = compare(reference, candidate, tie_tolerance=0.1)
    assert agreement.top1 == pytest.approx(1 / 3)
    assert agreement.top1_within_tie == pytest.approx(2 / 3)
    assert compare(reference, candidate, tie_tolerance=0.0).top1_within_tie == agreement.top1
    assert compare(reference, candidate, tie_tolerance=0.6).top1_within_tie == 1.0
    assert agreement.max_abs_logit_diff == pytest.approx(1.0)


def test_k_quants_from_one_intermediate(exported: Any, tmp_path: Path) -> None:
    """Several llama.cpp types re-quantized from the one F16 file, with metadata read back.

    Measured top-1 against the merged model, tie-aware / raw: Q6_K 1.000 / 0.957, Q5_K_M
    0.999 / 0.938, Q3_K_M 0.960 / 0.909, Q2_K 0.792 / 0.749 (all 24 probes; this test uses 8)."""
    import gguf

    from medlora.export import DEFAULT_MIN_AGREEMENT, quantize_gguf
    from medlora.export._parity import llama_cpp_logits

    tokenizer = AutoTokenizer.from_pretrained(exported.merged_dir)
    ids = probe_ids(tokenizer, n=8)
    merged = AutoModelForCausalLM.from_pretrained(exported.merged_dir, dtype=torch.float32)
    reference = hf_logits(merged, ids)
    intermediate = exported.gguf_files["F16"]
    sizes = []
    for qtype, file_type in (("Q6_K", 18), ("Q5_K_M", 17), ("Q3_K_M", 12), ("Q2_K", 10)):
        path = quantize_gguf(intermediate, tmp_path / f"m-{qtype}.gguf", qtype, threads=2)
        sizes.append(path.stat().st_size)
        fields = {
            k: f.contents()
            for k, f in gguf.GGUFReader(str(path)).fields.items()
            if k.startswith(("general.", "medlora."))
        }
        assert fields["general.file_type"] == file_type
        assert fields["general.name"] == "clinical-tiny"
        assert fields["general.type"] == "model"
        assert fields["general.license"] == "apache-2.0"
        assert fields["general.base_model.0.name"].startswith("tiny-llama")
        assert "not a medical device" in fields["general.description"]
        assert fields["medlora.version"]
        agreement = compare(reference, llama_cpp_logits(path, ids))
        assert agreement.top1_within_tie >= DEFAULT_MIN_AGREEMENT[qtype], (qtype, agreement)
    assert sizes == sorted(sizes, reverse=True)


def test_generation_stops_at_eos_with_the_embedded_template(exported: Any) -> None:
    """llama.cpp's own chat path (template from the file, no stop strings of ours) ends every
    reply where the merged model ends it with ``</s>``; the export enforces it.

    Measured on the fixture: the merged model stops on 6/6 probes (2-5 tokens) and F16, Q8_0
    and Q4_K_M each stop on 6/6 with the same text. Before the chat template started with
    ``{{ bos_token }}``, llama-cpp-python's chat path dropped BOS and F16 ran past EOS on 1/6.
    """
    from medlora.export._parity import chat_template_problems

    tokenizer = AutoTokenizer.from_pretrained(exported.merged_dir)
    for qtype, path in exported.gguf_files.items():
        assert chat_template_problems(path, tokenizer) == [], qtype
    for qtype, row in exported.parity["generation"].items():
        assert row["probes"] == 6
        assert row["reference_stopped"] >= 3, row  # the check was exercised
        assert row["missed"] == [], (qtype, row)
    assert exported.parity["generation"]["F16"]["same_text"] == 6


def test_a_gguf_that_runs_past_eos_is_caught(exported: Any) -> None:
    """A reply that must stop within one token where llama.cpp needs more is listed."""
    from medlora.export._parity import generation_stops

    replies = [
        {"tokens": 0, "stopped": True, "text": ""},
        {"tokens": 64, "stopped": False, "text": ""},
    ]
    row = generation_stops(exported.gguf_files["F16"], replies, slack=1)
    assert row["missed"] == [0]
    assert row["reference_stopped"] == 1


def test_tokenization_is_one_path_from_training_to_llama_cpp(exported: Any) -> None:
    """The exported tokenizer (as vLLM or any HF user loads it) and llama.cpp agree 24/24.

    llama.cpp's SentencePiece path prepends '▁' to every text fragment after a special token,
    so each '</s>' between chat turns is followed by '▁'. transformers 5 does that only with
    legacy=True; medlora trains with it and writes "legacy": true into every exported
    tokenizer_config.json. A legacy=False load (transformers' default) differs by exactly those
    tokens, which is what this guards against."""
    from medlora.data import render
    from medlora.export import open_gguf
    from medlora.export._parity import probe_conversations

    report = exported.parity["tokenization"]
    assert (report["matching"], report["total"]) == (24, 24)
    assert json.loads((exported.merged_dir / "tokenizer_config.json").read_text())["legacy"]
    tokenizer = AutoTokenizer.from_pretrained(exported.merged_dir)
    default = AutoTokenizer.from_pretrained(exported.merged_dir, legacy=False)
    texts = [render(tokenizer, c, generation_prompt=True) for c in probe_conversations(24)]
    llm = open_gguf(exported.gguf_files["F16"], n_ctx=64, vocab_only=True)
    try:
        theirs = [llm.tokenize(t.encode(), add_bos=True, special=True) for t in texts]
    finally:
        llm.close()
    assert [tokenizer(t)["input_ids"] for t in texts] == theirs
    space, eos = tokenizer.convert_tokens_to_ids("▁"), tokenizer.eos_token_id
    extra = [[i for i in range(1, len(t)) if t[i] == space and t[i - 1] == eos] for t in theirs]
    assert all(len(e) == 2 for e in extra)  # after the system and the user turn
    dropped = [
        [x for i, x in enumerate(t) if i not in e] for t, e in zip(theirs, extra, strict=True)
    ]
    assert [default(t)["input_ids"] for t in texts] == dropped


def test_model_card_includes_the_data_card_when_the_run_has_one() -> None:
    from medlora import DataCard, RunDataCard, RunMetrics, RunRecord
    from medlora.export._card import model_card

    parity = {"artefacts": {}}
    common = {"name": "m", "base_model": "b", "license": "mit", "files": {}, "version": "0"}
    record = RunRecord(train_records=480, metrics=RunMetrics(initial_eval_loss=2.5, steps=3))
    plain = model_card(training=record, parity=parity, **common)
    assert "## Training data" not in plain
    assert "- records: 480 train, 0 held out" in plain
    assert "- held-out loss: 2.5000 before, nan after 3 steps" in plain
    stats = {"min": 1, "mean": 2.0, "median": 2.0, "p95": 3, "max": 3}
    dataset = DataCard(
        source="notes.jsonl",
        fingerprint="f" * 64,
        records=480,
        kinds={"qa": 300, "summary": 180},
        groups=None,
        chars=stats,
        turns=stats,
        exact_duplicate_groups=0,
        near_duplicate_pairs=0,
        skipped=0,
    )
    with_card = RunRecord(data_card=RunDataCard(dataset=dataset, phi={"NAME": 2}))
    card = model_card(training=with_card, parity=parity, **common)
    assert "## Training data" in card
    assert "- records: 480" in card and '"summary": 180' in card and '- phi: {"NAME": 2}' in card
    assert "Not a medical device" in card and card.startswith("---\nlicense: mit")
