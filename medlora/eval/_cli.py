"""Find what to evaluate in an export directory, and the records its run held out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medlora._errors import ModelLoadError
from medlora._io import restore
from medlora.data import ClinicalDataset


def _training_info(export_dir: Path) -> dict[str, Any]:
    meta = export_dir / "medlora.json"
    try:
        info = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{export_dir} is not a medlora export (cannot read {meta.name}: {exc}); "
            "pass the out_dir of `medlora export`"
        ) from exc
    training: dict[str, Any] = info.get("training", {})
    return training


def models_of_export(export_dir: str | Path, *, include_base: bool = True) -> dict[str, Path]:
    """Name -> path of every model in an export: base, adapter, merged, each GGUF file.

    Raises:
        ModelLoadError: ``export_dir`` is not a medlora export.
    """
    export_dir = Path(export_dir)
    restore(export_dir)
    training = _training_info(export_dir)
    models: dict[str, Path] = {}
    base = training.get("base_model")
    if include_base and base and Path(base).is_dir():
        models["base"] = Path(base)
    if (export_dir / "adapter" / "adapter_config.json").is_file():
        models["adapter"] = export_dir / "adapter"
    if (export_dir / "merged" / "config.json").is_file():
        models["merged"] = export_dir / "merged"
    for gguf in sorted((export_dir / "gguf").glob("*.gguf")):
        qtype = gguf.stem.rsplit("-", 1)[-1]
        models[f"gguf {qtype}"] = gguf
    return models


def held_out_dataset(export_dir: str | Path, *, data: str | Path | None = None) -> ClinicalDataset:
    """The records the export's training run held out (same data, fraction and seed).

    Args:
        export_dir: A medlora export directory.
        data: A JSONL file of evaluation records to use instead.
    """
    if data is not None:
        return ClinicalDataset.from_jsonl(data)
    config = _training_info(Path(export_dir)).get("config", {})
    source = config.get("data")
    opts: dict[str, Any] = {"system_prompt": config.get("system_prompt")}
    dataset = (
        ClinicalDataset.from_jsonl(source, **opts) if source else ClinicalDataset.default(**opts)
    )
    fraction = float(config.get("validation_fraction", 0.1)) or 0.1
    return dataset.split(test_size=fraction, seed=int(config.get("seed", 0)))[1]
