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
from medlora.export._card import model_card, write_modelfiles
from medlora.export._config import ExportConfig
from medlora.export._gguf import GGUF_NUMPY_TYPES, gguf_preflight, quantize_gguf, write_gguf
from medlora.export._gguf_checks import check_gguf_files
from medlora.export._gguf_lora import write_lora_gguf
from medlora.export._merge import load_trained, load_upcast, release_memory, write_merged_weights
from medlora.export._parity import (
    Agreement,
    compare,
    hf_logits,
    probe_ids,
    reference_replies,
)
from medlora.export._vllm import adapter_problems, merged_problems
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


@attrs.define
class AdapterExporter:
    """Ship a training run: adapter, merged safetensors for vLLM, GGUF for llama.cpp."""

    run: Path | TrainingResult = attrs.field()
    """A training run directory (or the :class:`~medlora.TrainingResult` of one)."""
    config: ExportConfig = attrs.field(factory=ExportConfig)
    """What to write and how strictly to check it."""

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
        problems: list[str] = []
        ids = probe_ids(tokenizer)
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
            reference = hf_logits(load_trained(base, adapter_src, quant), ids)
            release_memory()  # the 4-bit model is gone before any merge starts
            strategy = None
            merged_logits: list[Any] = []
            replies: list[dict[str, Any]] = []
            if "merged" in cfg.formats or "gguf" in cfg.formats:
                merged_dir = tmp / "merged"
                strategy, merged_logits, replies, measured = self._merge(
                    base, adapter_src, quant, ids, reference, merged_dir, tokenizer
                )
                parity["merge"] = measured
                limit = cfg.merge_kl_limit(strategy)
                if measured[strategy]["mean_kl"] > limit:
                    problems.append(
                        f"merged ({strategy}) mean KL {measured[strategy]['mean_kl']:.3g}"
                        f" > {limit:g} (max_merge_kl)"
                    )
                parity["artefacts"][f"merged ({strategy})"] = measured[strategy]
                files["merged safetensors (vLLM)"] = "merged/"
            fault_point("export-write", out_dir.name)
            gguf_files: dict[str, Path] = {}
            if "gguf" in cfg.formats and merged_dir is not None:
                gguf_files = self._write_gguf(merged_dir, tmp / "gguf", name, base)
                for qtype, path in gguf_files.items():
                    files[f"GGUF {qtype} (llama.cpp)"] = f"gguf/{path.name}"
                problems += check_gguf_files(
                    gguf_files,
                    ids=ids,
                    merged_logits=merged_logits,
                    replies=replies,
                    tokenizer=tokenizer,
                    config=cfg,
                    parity=parity,
                )
                write_modelfiles(tmp / "gguf", gguf_files, chat_template_of(tokenizer))
                if "merged" not in cfg.formats:
                    shutil.rmtree(tmp / "merged")
                    merged_dir = None
            del merged_logits, replies, reference
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
            if problems and cfg.parity:
                message = "export parity check failed: " + "; ".join(problems)
                if cfg.strict:
                    raise ExportError(
                        message + " (set strict=False to keep the export anyway)",
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
        reference: list[Any],
        dst: Path,
        tokenizer: Any,
    ) -> tuple[str, list[Any], list[dict[str, Any]], dict[str, dict[str, float]]]:
        """Write each candidate strategy's merged directory and measure it as it ships.

        Each candidate is written in ``merged_dtype`` and measured against training from that
        directory (16-bit storage, float32 compute: :func:`load_upcast`); the lowest-KL one
        becomes ``dst``, the others are deleted. Returns the strategy, the kept directory's
        logits on ``ids`` and greedy probe replies (the references for the GGUF files; empty
        when no GGUF is written) and every candidate's agreement. ``nf4-roundtrip`` is
        measured last and usually wins, so its loaded model gives the logits and replies
        without a second load; at most one candidate's logits are held.
        """
        wanted = self.config.merge_strategy
        candidates = ["original", "nf4-roundtrip"] if wanted == "auto" else [wanted]
        if quant is None:
            candidates = ["original"]
        for_gguf = "gguf" in self.config.formats
        measured: dict[str, dict[str, float]] = {}
        best: tuple[float, str] | None = None
        logits: list[Any] = []
        replies: list[dict[str, Any]] = []
        for strategy in candidates:
            path = dst.with_name(f".merged-{strategy}")
            self._write_merged(base, adapter, quant, strategy, path, tokenizer)
            logits = []  # the previous candidate's logits go before this one's are made
            release_memory()  # what the merge freed, before the 16-bit model comes in
            model = load_upcast(path)
            logits = hf_logits(model, ids)
            agreement: Agreement = compare(reference, logits)
            measured[strategy] = agreement.to_dict()
            if best is None or agreement.mean_kl < best[0]:
                if best is not None:
                    shutil.rmtree(dst.with_name(f".merged-{best[1]}"))
                best = (agreement.mean_kl, strategy)
                if for_gguf and strategy == candidates[-1]:
                    replies = reference_replies(model, tokenizer)
            else:
                shutil.rmtree(path)
            del model
            release_memory()
        assert best is not None
        dst.with_name(f".merged-{best[1]}").rename(dst)
        if not for_gguf:
            return best[1], [], [], measured
        if best[1] != candidates[-1]:
            model = load_upcast(dst)
            logits, replies = hf_logits(model, ids), reference_replies(model, tokenizer)
            del model
            release_memory()
        return best[1], logits, replies, measured

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
        GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
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

    def _write_gguf(self, merged_dir: Path, dst: Path, name: str, base: Path) -> dict[str, Path]:
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
                out[qtype] = quantize_gguf(intermediate, path, qtype)
        if "F16" not in self.config.gguf_types:
            intermediate.unlink()
        return out


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
