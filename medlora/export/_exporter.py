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
from medlora._versions import library_versions
from medlora._vllm import adapter_problems, merged_problems
from medlora.data import ClinicalDataset, stop_token_ids, stop_tokens
from medlora.export._card import model_card, write_modelfiles
from medlora.export._config import ExportConfig
from medlora.export._fidelity import RunText, run_text
from medlora.export._gguf import GGUF_NUMPY_TYPES, gguf_preflight, quantize_gguf, write_gguf
from medlora.export._gguf_checks import check_gguf_files
from medlora.export._gguf_lora import write_lora_gguf
from medlora.export._imatrix import ImportanceMatrix, collect_imatrix
from medlora.export._merge import load_trained, load_upcast, release_memory, write_merged_weights
from medlora.export._parity import (
    Agreement,
    ModelOutputs,
    hf_outputs,
    measure,
    probe_ids,
    reference_replies,
)
from medlora.training import QuantizationConfig, TrainingResult


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

    def _run_info(self) -> dict[str, Any]:
        recover(self.run_dir)  # e.g. an adapter/ a killed training left beside, not in place
        meta = self.run_dir / "medlora.json"
        if not meta.is_file() or not (self.run_dir / "adapter").is_dir():
            raise ExportError(
                f"{self.run_dir} is not a finished medlora training run (no "
                "medlora.json or adapter/): pass the output_dir of a run."
            )
        info: dict[str, Any] = json.loads(meta.read_text())
        return info

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
        with disk_space(ExportError, out_dir.parent, "the export", hint=hint):
            return self._export(out_dir, hint)

    def _export(self, out_dir: Path, hint: str) -> ExportResult:
        cfg = self.config
        info = self._run_info()
        base = Path(info["base_model"])
        quant_cfg = info["config"].get("quantization")
        quant = QuantizationConfig.from_dict(quant_cfg) if quant_cfg else None
        adapter_src = self.run_dir / "adapter"
        tokenizer = load_tokenizer(
            adapter_src if (adapter_src / "tokenizer_config.json").exists() else base
        )
        recover(out_dir.parent)  # leftovers of killed exports beside this one, before measuring
        need = _check_free_space(out_dir, base)
        if "gguf" in cfg.formats:  # architecture, RoPE, tokenizer: refuse before merging
            gguf_preflight(base)
        name = cfg.name or out_dir.name
        parity: dict[str, Any] = {"artefacts": {}}
        agreements: dict[str, Agreement] = {}
        problems: list[str] = []
        ids = probe_ids(tokenizer)
        text = run_text(
            info,
            tokenizer,
            held_out=self.held_out,
            calibration=self.calibration,
            max_positions=cfg.fidelity_positions,
            max_calibration_tokens=cfg.imatrix_tokens if cfg.imatrix_types else 0,
        )
        parity["fidelity_text"] = {
            "source": text.fidelity.source,
            "texts": len(text.fidelity.ids),
            "positions": text.fidelity.positions,
        }
        with atomic_dir(out_dir, error=ExportError, need=need, hint=hint) as tmp:
            files: dict[str, str] = {}
            adapter_dir = merged_dir = None
            if "adapter" in cfg.formats:
                adapter_dir = self._write_adapter(adapter_src, tmp / "adapter", base)
                files["peft adapter (vLLM --enable-lora)"] = "adapter/"
            if "gguf-adapter" in cfg.formats:
                lora = tmp / "gguf" / f"{name}-lora-F32.gguf"
                write_lora_gguf(
                    adapter_src, lora, base_model_dir=base, metadata=self._gguf_metadata(name, base)
                )
                files["GGUF LoRA adapter (llama.cpp --lora, on the base GGUF)"] = (
                    f"gguf/{lora.name}"
                )
            reference = hf_outputs(load_trained(base, adapter_src, quant), ids, text.fidelity)
            release_memory()  # the 4-bit model is gone before any merge starts
            strategy = None
            merged: _Merged | None = None
            if "merged" in cfg.formats or "gguf" in cfg.formats:
                merged_dir = tmp / "merged"
                merged = self._merge(
                    base, adapter_src, quant, ids, reference, merged_dir, tokenizer, text
                )
                strategy, kept = merged.strategy, merged.measured[merged.strategy]
                parity["merge"] = {k: v.to_dict() for k, v in merged.measured.items()}
                limit = cfg.merge_kl_limit(strategy)
                if kept.mean_kl > limit:
                    problems.append(
                        f"merged ({strategy}) mean KL {kept.mean_kl:.3g} > {limit:g} (max_merge_kl)"
                    )
                agreements[f"merged ({strategy})"] = kept
                files["merged safetensors (vLLM)"] = "merged/"
            fault_point("export-write", out_dir.name)
            gguf_files: dict[str, Path] = {}
            if "gguf" in cfg.formats and merged is not None and merged_dir is not None:
                imatrix = merged.imatrix
                parity["imatrix"] = _imatrix_record(imatrix, cfg.imatrix_types, text)
                gguf_files = self._write_gguf(merged_dir, tmp / "gguf", name, base, imatrix)
                for qtype, path in gguf_files.items():
                    files[f"GGUF {qtype} (llama.cpp)"] = f"gguf/{path.name}"
                assert merged.outputs is not None
                problems += check_gguf_files(
                    gguf_files,
                    ids=ids,
                    text=text.fidelity,
                    reference=merged.outputs,
                    replies=merged.replies,
                    imatrix_types=cfg.imatrix_types if imatrix is not None else (),
                    tokenizer=tokenizer,
                    config=cfg,
                    parity=parity,
                    agreements=agreements,
                )
                stops = stop_tokens(tokenizer)
                write_modelfiles(tmp / "gguf", gguf_files, chat_template_of(tokenizer), stops)
                if "merged" not in cfg.formats:
                    shutil.rmtree(tmp / "merged")
                    merged_dir = None
            del merged, reference
            parity["artefacts"] = {k: v.to_dict() for k, v in agreements.items()}
            parity["vllm"] = self._check_vllm(
                tmp / "adapter" if adapter_dir else None, tmp / "merged" if merged_dir else None
            )
            write_json(tmp / "parity.json", parity)
            (tmp / "README.md").write_text(
                model_card(
                    name=name,
                    base_model=cfg.base_model_id or str(base),
                    license=cfg.license,
                    training=info,
                    parity=parity,
                    files=files,
                    version=library_versions()["medlora"],
                )
            )
            write_json(
                tmp / "medlora.json",
                {
                    "kind": "export",
                    "export_config": cfg.to_dict(),
                    "training": info,
                    "merge_strategy": strategy,
                    "versions": library_versions(),
                },
            )
            if problems and cfg.on_failure != "ignore":
                message = "export parity check failed: " + "; ".join(problems)
                if cfg.on_failure == "raise":
                    raise ExportError(
                        message + " (set on_failure='warn' to keep the export anyway)",
                        measurements=parity,
                    )
                warnings.warn(message, stacklevel=2)
        return ExportResult(
            out_dir=out_dir,
            adapter_dir=out_dir / "adapter" if adapter_dir else None,
            merged_dir=out_dir / "merged" if merged_dir else None,
            gguf_files={k: out_dir / "gguf" / v.name for k, v in gguf_files.items()},
            merge_strategy=strategy,
            parity=parity,
            agreements=agreements,
        )

    def _write_adapter(self, src: Path, dst: Path, base: Path) -> Path:
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(COMPLETE_MARKER))
        config_path = dst / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = self.config.base_model_id or str(base)
        write_json(config_path, config)
        return dst

    def _merge(
        self,
        base: Path,
        adapter: Path,
        quant: QuantizationConfig | None,
        ids: list[list[int]],
        reference: ModelOutputs,
        dst: Path,
        tokenizer: Any,
        text: RunText,
    ) -> _Merged:
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
        if quant is None:
            candidates = ["original"]
        for_gguf = "gguf" in self.config.formats
        measured: dict[str, Agreement] = {}
        kept: tuple[str, ModelOutputs] | None = None
        extras: tuple[list[dict[str, Any]], ImportanceMatrix | None] = ([], None)
        for strategy in candidates:
            path = dst.with_name(f".merged-{strategy}")
            self._write_merged(base, adapter, quant, strategy, path, tokenizer)
            release_memory()  # what the merge freed, before the 16-bit model comes in
            model = load_upcast(path)
            outputs = hf_outputs(model, ids, text.fidelity)
            measured[strategy] = measure(reference, outputs, text.fidelity)
            if kept is None or _distance(measured[strategy]) < _distance(measured[kept[0]]):
                if kept is not None:
                    shutil.rmtree(dst.with_name(f".merged-{kept[0]}"))
                kept = (strategy, outputs)
                if for_gguf and strategy == candidates[-1]:
                    extras = self._gguf_references(model, tokenizer, text)
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
            extras = self._gguf_references(model, tokenizer, text)
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

    def _write_merged(
        self,
        base: Path,
        adapter: Path,
        quant: QuantizationConfig | None,
        strategy: str,
        dst: Path,
        tokenizer: Any,
    ) -> Path:
        from transformers import GenerationConfig

        write_merged_weights(
            base, adapter, dst, strategy=strategy, quant=quant, dtype=self.config.merged_dtype
        )
        copy_tokenizer_files(base, dst, tokenizer)
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
