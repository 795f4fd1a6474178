"""AdapterExporter: adapter, merged HF weights and GGUF files, each checked against training."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import attrs

from medlora._errors import ExportError
from medlora._fault import fault_point
from medlora._hub import copy_tokenizer_files, load_tokenizer
from medlora._io import (
    COMPLETE_MARKER,
    atomic_dir,
    disk_space,
    format_size,
    recover,
    write_json,
)
from medlora._template import chat_template_of
from medlora._threads import cpu_threads
from medlora._versions import library_versions
from medlora._vllm import adapter_problems, merged_problems
from medlora.data import ClinicalDataset, stop_token_ids, stop_tokens
from medlora.export._card import model_card, write_modelfiles
from medlora.export._config import ExportConfig
from medlora.export._fidelity import RunText, run_text
from medlora.export._gguf import GGUF_NUMPY_TYPES, gguf_preflight, quantize_gguf, write_gguf
from medlora.export._gguf_checks import GgufChecks, check_gguf_files
from medlora.export._gguf_lora import write_lora_gguf
from medlora.export._imatrix import ImportanceMatrix, collect_imatrix
from medlora.export._merge import load_trained, load_upcast, release_memory, write_merged_weights
from medlora.export._parity import (
    Agreement,
    ModelOutputs,
    ParityRow,
    hf_outputs,
    measure,
    probe_ids,
    reference_replies,
)
from medlora.training import QuantizationConfig, RunRecord, TrainingResult


@attrs.frozen(kw_only=True)
class ExportResult:
    """Where each artefact went and how it measured against the trained model."""

    out_dir: Path
    """The export directory (holds ``README.md``, ``parity.json``, ``medlora.json``)."""
    adapter_dir: Path | None
    """peft adapter directory, if exported."""
    merged_dir: Path | None
    """Merged HF directory for vLLM, if exported."""
    gguf_files: dict[str, Path]
    """GGUF type -> file."""
    merge_strategy: str | None
    """Merge strategy used for ``merged_dir``."""
    parity: dict[str, Any]
    """Everything measured (also in ``parity.json``)."""
    agreements: dict[str, Agreement] = attrs.field(factory=dict)
    """Artefact (``merged (nf4-roundtrip)``, ``gguf Q4_K_M``, ...) -> its measurements
    against the reference: top-1, KL and, on held-out replies, the perplexity ratio."""
    parity_rows: tuple[ParityRow, ...] = ()
    """One row per measured artefact (the merged model, then each GGUF file): its
    measurements, the gates it was held to and whether it passed (``parity.json``'s
    ``artefacts``)."""


@attrs.frozen(kw_only=True)
class _Merged:
    """The kept merged model's strategy and what the GGUF files are measured against."""

    strategy: str
    outputs: ModelOutputs | None
    """Its logits on probes and held-out replies (None when no GGUF is written)."""
    replies: list[dict[str, Any]]
    """Its greedy probe replies."""
    imatrix: ImportanceMatrix | None
    """Importance matrix collected from it, for the K-quants."""
    measured: dict[str, Agreement]
    """Every candidate strategy against the trained model."""


@attrs.frozen(kw_only=True)
class _Plan:
    """What every step of an export needs, settled before anything is written."""

    record: RunRecord
    """The training run's record."""
    base: Path
    """The base model directory."""
    quant: QuantizationConfig | None
    """How training quantized the base."""
    adapter: Path
    """The run's adapter directory."""
    tokenizer: Any
    name: str
    """The export's name (GGUF file names, model card)."""
    ids: list[list[int]]
    """Probe prompts' token ids."""
    text: RunText
    """Held-out replies to measure on, calibration text for the importance matrix."""
    need: int
    """Bytes the export is estimated to need."""


@attrs.define
class _Shipped:
    """What the export has written so far and what it measured."""

    parity: dict[str, Any]
    """``parity.json`` as it grows."""
    files: dict[str, str] = attrs.field(factory=dict)
    """Artefact description -> path inside the export (the model card's file table)."""
    rows: list[ParityRow] = attrs.field(factory=list)
    problems: list[str] = attrs.field(factory=list)
    """Problems not tied to one artefact (shared by the GGUF files)."""
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
    gguf_files: dict[str, Path] = attrs.field(factory=dict)
    strategy: str | None = None

    def add_adapter(self, path: Path) -> None:
        self.adapter_dir = path
        self.files["peft adapter (vLLM --enable-lora)"] = "adapter/"

    def add_lora_gguf(self, path: Path) -> None:
        self.files["GGUF LoRA adapter (llama.cpp --lora, on the base GGUF)"] = f"gguf/{path.name}"

    def add_merged(self, merged: _Merged, row: ParityRow, path: Path) -> None:
        self.strategy, self.merged_dir = merged.strategy, path
        self.parity["merge"] = {k: v.to_dict() for k, v in merged.measured.items()}
        self.rows.append(row)
        self.files["merged safetensors (vLLM)"] = "merged/"

    def add_gguf(
        self, files: dict[str, Path], checks: GgufChecks, imatrix: dict[str, Any] | None
    ) -> None:
        self.gguf_files = files
        for qtype, path in files.items():
            self.files[f"GGUF {qtype} (llama.cpp)"] = f"gguf/{path.name}"
        self.parity["imatrix"] = imatrix
        self.parity["tokenization"] = checks.tokenization
        self.parity["chat_path"] = checks.chat_path
        self.parity["generation"] = checks.generation
        self.rows += checks.rows
        self.problems += checks.problems

    def drop_merged(self) -> None:
        """The merged directory was only the GGUF files' source: it is not shipped."""
        self.merged_dir = None
        del self.files["merged safetensors (vLLM)"]

    def all_problems(self) -> list[str]:
        """Every failed gate: the artefacts' in order, then the shared ones."""
        return [p for row in self.rows for p in row.problems] + self.problems

    def result(self, out_dir: Path) -> ExportResult:
        """The :class:`ExportResult`, with paths under ``out_dir`` (where the export lands)."""
        return ExportResult(
            out_dir=out_dir,
            adapter_dir=out_dir / "adapter" if self.adapter_dir else None,
            merged_dir=out_dir / "merged" if self.merged_dir else None,
            gguf_files={k: out_dir / "gguf" / v.name for k, v in self.gguf_files.items()},
            merge_strategy=self.strategy,
            parity=self.parity,
            agreements={row.artefact: row.agreement for row in self.rows},
            parity_rows=tuple(self.rows),
        )


@attrs.define
class AdapterExporter:
    """Ship a training run: adapter, merged safetensors for vLLM, GGUF for llama.cpp."""

    run: Path | TrainingResult = attrs.field()
    """A training run directory (or the :class:`~medlora.TrainingResult` of one)."""
    config: ExportConfig = attrs.field(factory=ExportConfig)
    """What to write and how strictly to check it."""
    held_out: ClinicalDataset | None = None
    """Records whose replies every artefact is scored on; default: the run's held-out split,
    rebuilt from its config (the embedded synthetic records, with a warning, when it cannot
    be)."""
    calibration: ClinicalDataset | None = None
    """Records the importance matrix is collected on; default: the run's training split."""

    @property
    def run_dir(self) -> Path:
        """The training run directory."""
        return self.run.run_dir if isinstance(self.run, TrainingResult) else Path(self.run)

    def _run_record(self) -> RunRecord:
        recover(self.run_dir)  # e.g. an adapter/ a killed training left beside, not in place
        meta = self.run_dir / "medlora.json"
        if not meta.is_file() or not (self.run_dir / "adapter").is_dir():
            raise ExportError(
                f"{self.run_dir} is not a finished medlora training run (no "
                "medlora.json or adapter/): pass the output_dir of a run."
            )
        record = RunRecord.from_dir(self.run_dir)
        if record.base_model is None:
            raise ExportError(
                f"{meta} names no base_model: it is not the record of a finished training run; "
                "pass the output_dir of a run."
            )
        return record

    def export(self, out_dir: str | Path) -> ExportResult:
        """Write every configured artefact under ``out_dir``, atomically.

        The export is built in a temporary directory beside ``out_dir`` and renamed into place
        only when every artefact passed its checks, so a failed or interrupted export leaves a
        previous one intact.

        Raises:
            ExportError: Among others, when the disk (or quota) is too full: it names the
                directory, the space needed and the space free; nothing partial is left and a
                previous export stays intact.
        """
        out_dir = Path(out_dir)
        hint = "free some space or choose another out_dir; a previous export is intact"
        space = disk_space(ExportError, out_dir.parent, "the export", hint=hint)
        with space, cpu_threads(self.config.threads):
            return self._export(out_dir, hint)

    def _export(self, out_dir: Path, hint: str) -> ExportResult:
        """The export's steps, in order; each artefact's step returns it and its parity row."""
        formats = self.config.formats
        plan = self._plan(out_dir)
        with atomic_dir(out_dir, error=ExportError, need=plan.need, hint=hint) as tmp:
            shipped = _Shipped(parity={"artefacts": {}, "fidelity_text": _text_record(plan.text)})
            if "adapter" in formats:
                shipped.add_adapter(self._write_adapter(plan.adapter, tmp / "adapter", plan.base))
            if "gguf-adapter" in formats:
                shipped.add_lora_gguf(self._ship_lora_gguf(plan, tmp / "gguf"))
            trained = load_trained(plan.base, plan.adapter, plan.quant)
            reference = hf_outputs(trained, plan.ids, plan.text.fidelity)
            del trained
            release_memory()  # the 4-bit model is gone before any merge starts
            merged: _Merged | None = None
            if "merged" in formats or "gguf" in formats:
                merged, row = self._ship_merged(plan, reference, tmp / "merged")
                shipped.add_merged(merged, row, tmp / "merged")
            fault_point("export-write", out_dir.name)
            if "gguf" in formats and merged is not None:
                shipped.add_gguf(*self._ship_gguf(plan, merged, tmp))
                if "merged" not in formats:
                    shutil.rmtree(tmp / "merged")
                    shipped.drop_merged()
            del merged, reference
            shipped.parity["artefacts"] = {row.artefact: row.to_dict() for row in shipped.rows}
            shipped.parity["vllm"] = self._check_vllm(shipped.adapter_dir, shipped.merged_dir)
            self._write_records(plan, shipped, tmp)
            self._judge(shipped)
        return shipped.result(out_dir)

    def _plan(self, out_dir: Path) -> _Plan:
        """Read the run, refuse what cannot work (disk space, GGUF support) before any model
        loads, and tokenize the text the artefacts are measured on."""
        cfg = self.config
        record = self._run_record()
        base = record.base_model
        assert base is not None  # checked by _run_record
        quant = record.quantization()
        adapter = self.run_dir / "adapter"
        tokenizer = load_tokenizer(
            adapter if (adapter / "tokenizer_config.json").exists() else base
        )
        recover(out_dir.parent)  # leftovers of killed exports beside this one, before measuring
        need = _check_free_space(out_dir, base)
        if "gguf" in cfg.formats:  # architecture, RoPE, tokenizer: refuse before merging
            gguf_preflight(base)
        ids = probe_ids(tokenizer)
        text = run_text(
            record,
            tokenizer,
            held_out=self.held_out,
            calibration=self.calibration,
            max_positions=cfg.fidelity_positions,
            max_calibration_tokens=cfg.imatrix_tokens if cfg.imatrix_types else 0,
        )
        return _Plan(
            record=record,
            base=base,
            quant=quant,
            adapter=adapter,
            tokenizer=tokenizer,
            name=cfg.name or out_dir.name,
            ids=ids,
            text=text,
            need=need,
        )

    def _ship_lora_gguf(self, plan: _Plan, dst: Path) -> Path:
        """The LoRA alone as a llama.cpp GGUF adapter (F32)."""
        path = dst / f"{plan.name}-lora-F32.gguf"
        metadata = self._gguf_metadata(plan.name, plan.base)
        write_lora_gguf(plan.adapter, path, base_model_dir=plan.base, metadata=metadata)
        return path

    def _ship_merged(
        self, plan: _Plan, reference: ModelOutputs, dst: Path
    ) -> tuple[_Merged, ParityRow]:
        """The merged model (the candidate closest to the trained model) and its row, gated on
        mean KL (``max_merge_kl``)."""
        merged = self._merge(plan, reference, dst)
        strategy, kept = merged.strategy, merged.measured[merged.strategy]
        limit = self.config.merge_kl_limit(strategy)
        artefact = f"merged ({strategy})"
        failed = kept.mean_kl > limit
        problem = f"{artefact} mean KL {kept.mean_kl:.3g} > {limit:g} (max_merge_kl)"
        row = ParityRow(
            artefact=artefact,
            kind="merged",
            agreement=kept,
            limits={"max_mean_kl": limit},
            problems=(problem,) if failed else (),
        )
        return merged, row

    def _ship_gguf(
        self, plan: _Plan, merged: _Merged, tmp: Path
    ) -> tuple[dict[str, Path], GgufChecks, dict[str, Any] | None]:
        """Every GGUF type from the merged directory, each measured in llama.cpp against the
        merged model; their Modelfiles; and ``parity.json``'s importance-matrix record."""
        cfg, imatrix = self.config, merged.imatrix
        files = self._write_gguf(tmp / "merged", tmp / "gguf", plan.name, plan.base, imatrix)
        assert merged.outputs is not None  # measured whenever GGUF files follow
        checks = check_gguf_files(
            files,
            ids=plan.ids,
            text=plan.text.fidelity,
            reference=merged.outputs,
            replies=merged.replies,
            imatrix_types=cfg.imatrix_types if imatrix is not None else (),
            tokenizer=plan.tokenizer,
            config=cfg,
        )
        stops = stop_tokens(plan.tokenizer)
        write_modelfiles(tmp / "gguf", files, chat_template_of(plan.tokenizer), stops)
        return files, checks, _imatrix_record(imatrix, cfg.imatrix_types, plan.text)

    def _write_records(self, plan: _Plan, shipped: _Shipped, tmp: Path) -> None:
        """``parity.json``, the model card (``README.md``) and ``medlora.json``."""
        cfg = self.config
        write_json(tmp / "parity.json", shipped.parity)
        (tmp / "README.md").write_text(
            model_card(
                name=plan.name,
                base_model=cfg.base_model_id or str(plan.base),
                license=cfg.license,
                training=plan.record,
                parity=shipped.parity,
                files=shipped.files,
                version=library_versions()["medlora"],
            )
        )
        plan.record.write_export(tmp, export_config=cfg.to_dict(), merge_strategy=shipped.strategy)

    def _judge(self, shipped: _Shipped) -> None:
        """Raise or warn when a parity gate failed, as ``on_failure`` says."""
        problems = shipped.all_problems()
        if problems and self.config.on_failure != "ignore":
            message = "export parity check failed: " + "; ".join(problems)
            if self.config.on_failure == "raise":
                raise ExportError(
                    message + " (set on_failure='warn' to keep the export anyway)",
                    measurements=shipped.parity,
                )
            warnings.warn(message, stacklevel=3)

    def _write_adapter(self, src: Path, dst: Path, base: Path) -> Path:
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(COMPLETE_MARKER))
        config_path = dst / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = self.config.base_model_id or str(base)
        write_json(config_path, config)
        return dst

    def _merge(self, plan: _Plan, reference: ModelOutputs, dst: Path) -> _Merged:
        """Write each candidate strategy's merged directory and measure it as it ships.

        Each candidate is written in ``merged_dtype`` and measured against training from that
        directory (16-bit storage, float32 compute: :func:`load_upcast`) on the probes and
        the held-out replies; the one closest to the trained model (lowest KL on held-out
        replies) becomes ``dst``, the others are deleted. When GGUF files follow, the kept
        model's outputs, greedy probe replies and importance matrix come with it.
        ``nf4-roundtrip`` is measured last and usually wins, so its loaded model serves
        without a second load; at most one candidate's outputs are held besides the kept one.
        """
        wanted = self.config.merge_strategy
        candidates = ["original", "nf4-roundtrip"] if wanted == "auto" else [wanted]
        if plan.quant is None:
            candidates = ["original"]
        for_gguf = "gguf" in self.config.formats
        measured: dict[str, Agreement] = {}
        kept: tuple[str, ModelOutputs] | None = None
        extras: tuple[list[dict[str, Any]], ImportanceMatrix | None] = ([], None)
        for strategy in candidates:
            path = dst.with_name(f".merged-{strategy}")
            self._write_merged(plan, strategy, path)
            release_memory()  # what the merge freed, before the 16-bit model comes in
            model = load_upcast(path)
            outputs = hf_outputs(model, plan.ids, plan.text.fidelity)
            measured[strategy] = measure(reference, outputs, plan.text.fidelity)
            if kept is None or _distance(measured[strategy]) < _distance(measured[kept[0]]):
                if kept is not None:
                    shutil.rmtree(dst.with_name(f".merged-{kept[0]}"))
                kept = (strategy, outputs)
                if for_gguf and strategy == candidates[-1]:
                    extras = self._gguf_references(model, plan.tokenizer, plan.text)
            else:
                shutil.rmtree(path)
            del model, outputs
            release_memory()
        assert kept is not None
        strategy = kept[0]
        dst.with_name(f".merged-{strategy}").rename(dst)
        if not for_gguf:
            return _Merged(
                strategy=strategy, outputs=None, replies=[], imatrix=None, measured=measured
            )
        if strategy != candidates[-1]:
            model = load_upcast(dst)
            extras = self._gguf_references(model, plan.tokenizer, plan.text)
            del model
            release_memory()
        return _Merged(
            strategy=strategy,
            outputs=kept[1],
            replies=extras[0],
            imatrix=extras[1],
            measured=measured,
        )

    def _gguf_references(
        self, model: Any, tokenizer: Any, text: RunText
    ) -> tuple[list[dict[str, Any]], ImportanceMatrix | None]:
        """The merged model's greedy probe replies, and its importance matrix on the
        calibration text when a K-quant will use it."""
        replies = reference_replies(model, tokenizer)
        if not self.config.imatrix_types or not text.calibration:
            return replies, None
        dataset = f"medlora: {text.calibration_source}, {text.calibration_tokens} tokens"
        return replies, collect_imatrix(model, text.calibration, dataset=dataset)

    def _write_merged(self, plan: _Plan, strategy: str, dst: Path) -> Path:
        from transformers import GenerationConfig

        tokenizer, dtype = plan.tokenizer, self.config.merged_dtype
        write_merged_weights(
            plan.base, plan.adapter, dst, strategy=strategy, quant=plan.quant, dtype=dtype
        )
        copy_tokenizer_files(plan.base, dst, tokenizer)
        stops = stop_token_ids(tokenizer)  # EOS, and a reply's end token when it differs
        GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=stops[0] if len(stops) == 1 else stops,
            pad_token_id=tokenizer.pad_token_id,
            max_new_tokens=256,
        ).save_pretrained(dst)
        return dst

    def _gguf_metadata(self, name: str, base: Path) -> dict[str, str]:
        return {
            "general.name": name,
            "general.license": self.config.license,
            "general.base_model": self.config.base_model_id or base.name,
            "general.description": "medlora QLoRA fine-tune; not a medical device",
        }

    @staticmethod
    def _check_vllm(adapter: Path | None, merged: Path | None) -> dict[str, list[str]]:
        """vLLM's contract: adapter problems warn (peft still loads it), merged ones raise."""
        found = {
            "adapter": adapter_problems(adapter) if adapter else [],
            "merged": merged_problems(merged) if merged else [],
        }
        if found["adapter"]:
            warnings.warn(
                "vLLM cannot serve the adapter with --enable-lora: "
                + "; ".join(found["adapter"])
                + " (serve the merged directory instead)",
                stacklevel=4,
            )
        if found["merged"]:
            raise ExportError(
                f"the merged directory is not servable by vLLM: {'; '.join(found['merged'])}",
                measurements=found,
            )
        return found

    def _write_gguf(
        self,
        merged_dir: Path,
        dst: Path,
        name: str,
        base: Path,
        imatrix: ImportanceMatrix | None,
    ) -> dict[str, Path]:
        dst.mkdir(exist_ok=True)
        metadata = self._gguf_metadata(name, base)
        out: dict[str, Path] = {}
        intermediate = dst / f"{name}-F16.gguf"
        write_gguf(merged_dir, intermediate, outtype="F16", metadata=metadata)
        for qtype in self.config.gguf_types:
            path = dst / f"{name}-{qtype}.gguf"
            if qtype == "F16":
                out[qtype] = intermediate
            elif qtype in GGUF_NUMPY_TYPES:
                out[qtype] = write_gguf(merged_dir, path, outtype=qtype, metadata=metadata)
            else:
                weights = imatrix if qtype in self.config.imatrix_types else None
                out[qtype] = quantize_gguf(intermediate, path, qtype, imatrix=weights)
        if "F16" not in self.config.gguf_types:
            intermediate.unlink()
        return out


def _distance(agreement: Agreement) -> float:
    """How far a merge is from the trained model: KL on held-out replies when measured."""
    return agreement.reply_kl if agreement.reply_kl is not None else agreement.mean_kl


def _text_record(text: RunText) -> dict[str, Any]:
    """``parity.json``'s account of the held-out text every artefact is measured on."""
    return {
        "source": text.fidelity.source,
        "texts": len(text.fidelity.ids),
        "positions": text.fidelity.positions,
    }


def _imatrix_record(
    imatrix: ImportanceMatrix | None, types: tuple[str, ...], text: RunText
) -> dict[str, Any] | None:
    """``parity.json``'s account of the importance matrix (None when none was used)."""
    if imatrix is None:
        return None
    return {
        "types": list(types),
        "entries": len(imatrix.values),
        "tokens": imatrix.tokens,
        "chunks": imatrix.chunks,
        "source": text.calibration_source,
    }


def _check_free_space(out_dir: Path, base: Path) -> int:
    """Refuse to start when the disk clearly cannot hold the export (4x the base weights);
    returns that estimate of the bytes needed."""
    need = 4 * sum(p.stat().st_size for p in base.glob("*.safetensors"))
    probe = out_dir.parent if out_dir.parent.exists() else Path.cwd()
    free = shutil.disk_usage(probe).free
    if free < need:
        raise ExportError(
            f"only {format_size(free)} free under {probe}, the export needs about "
            f"{format_size(need)}; free space or choose another out_dir"
        )
    return need
