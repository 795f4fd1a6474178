"""Find what to evaluate in an export directory, and the records its run held out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medlora._errors import DatasetError, ModelLoadError
from medlora._io import restore
from medlora.data import ClinicalDataset, DataConfig


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
    """Exactly the records the export's training run held out, re-created by the trainer's own
    code path (``medlora.training.run_data``) and checked against the fingerprint the run
    recorded.

    Args:
        export_dir: A medlora export directory.
        data: A records file (any format ``DataConfig`` reads) to evaluate on instead.

    Raises:
        DatasetError: The run held out nothing, trained on datasets given in Python, or its
            data changed since; the message says to pass ``--data``.
    """
    if data is not None:
        return DataConfig(path=str(data)).read()
    from medlora.training import HeldOutSplit, TrainingConfig, run_data

    info = _training_info(Path(export_dir))
    recorded = info.get("held_out")
    split = HeldOutSplit.from_dict(recorded) if isinstance(recorded, dict) else None
    if split is not None and split.recipe in ("none", "given"):
        why = {
            "none": "held out no records (validation_fraction 0 and no data.eval)",
            "given": "was trained on datasets given in Python, which its config cannot rebuild",
        }[split.recipe]
        raise DatasetError(f"the training run {why}; pass --data FILE of evaluation records")
    rebuilt = run_data(TrainingConfig.from_dict(info.get("config", {})))
    held = rebuilt.held_out
    if split is not None:
        same = held is not None and held.fingerprint == split.fingerprint
    else:  # a run from before held-out splits were recorded: check what it trained on
        same = held is not None and rebuilt.train.fingerprint == info.get("data_fingerprint")
    if held is None or not same:
        raise DatasetError(
            "the records rebuilt from the run's config are not the ones it held out (the data "
            "file changed, or the run held out nothing); pass --data FILE of evaluation records"
        )
    return held
