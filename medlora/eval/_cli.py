"""Find what to evaluate in an export directory, and the records its run held out."""

from __future__ import annotations

from pathlib import Path

from medlora._io import restore
from medlora.data import ClinicalDataset, DataConfig
from medlora.training import RunRecord


def models_of_export(export_dir: str | Path, *, include_base: bool = True) -> dict[str, Path]:
    """Name -> path of every model in an export: base, adapter, merged, each GGUF file.

    Raises:
        ModelLoadError: ``export_dir`` is not a medlora export.
    """
    export_dir = Path(export_dir)
    restore(export_dir)
    base = RunRecord.from_dir(export_dir).base_model
    models: dict[str, Path] = {}
    if include_base and base is not None and base.is_dir():
        models["base"] = base
    if (export_dir / "adapter" / "adapter_config.json").is_file():
        models["adapter"] = export_dir / "adapter"
    if (export_dir / "merged" / "config.json").is_file():
        models["merged"] = export_dir / "merged"
    for gguf in sorted((export_dir / "gguf").glob("*.gguf")):
        qtype = gguf.stem.rsplit("-", 1)[-1]
        models[f"gguf {qtype}"] = gguf
    return models


def held_out_dataset(export_dir: str | Path, *, data: str | Path | None = None) -> ClinicalDataset:
    """Exactly the records the export's training run held out
    (:meth:`RunRecord.held_out <medlora.training.RunRecord.held_out>`: re-created by the
    trainer's own code path and checked against the fingerprint the run recorded).

    Args:
        export_dir: A medlora export directory (or a training run directory).
        data: A records file (any format ``DataConfig`` reads) to evaluate on instead.

    Raises:
        DatasetError: The run held out nothing, trained on datasets given in Python, or its
            data changed since; the message says to pass ``--data``.
        ModelLoadError: ``export_dir`` has no readable ``medlora.json``.
    """
    if data is not None:
        return DataConfig(path=str(data)).read()
    return RunRecord.from_dir(export_dir).held_out()
