"""The ``medlora`` command: quickstart, train, export, serve and eval, over the API objects."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlora._errors import MedLoraError


def _quiet_libraries() -> None:
    """Keep third-party chatter (load bars, deprecation notes) out of the report."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    for name in ("transformers", "peft", "bitsandbytes", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _quickstart(args: argparse.Namespace) -> int:
    from medlora._quickstart import QuickstartOptions, run_quickstart

    options = QuickstartOptions(
        out=args.out,
        tiny=args.tiny,
        steps=args.steps,
        pretrain_steps=args.pretrain_steps,
        seed=args.seed,
        threads=args.threads,
    )
    run_quickstart(options)
    return 0


def _train(args: argparse.Namespace) -> int:
    from medlora import QLoRATrainer, TrainingConfig

    config = TrainingConfig.from_file(args.config)
    trainer = QLoRATrainer(config)
    print(trainer.check_data().report(), flush=True)  # before any model loads
    result = trainer.train(progress=True, resume=args.resume)
    if result.resumed_from_step is not None:
        print(f"resumed from step {result.resumed_from_step}")
    print(f"held-out loss {result.initial_eval_loss:.4f} -> {result.final_eval_loss:.4f}")
    print(f"adapter: {result.adapter_dir}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from medlora import DataConfig, TrainingConfig
    from medlora.training import run_data

    path = Path(args.file)
    if path.suffix.lower() in (".yaml", ".yml", ".toml"):  # a training config: its data section
        data = run_data(TrainingConfig.from_file(path))
        lines, card = data.report().splitlines(), data.train.describe()
    else:
        pairs = [item.partition("=") for item in args.field_map or ()]
        config = DataConfig(
            path=str(path),
            format=args.format,
            kind=args.kind,
            field_map={a: b for a, _, b in pairs} or None,
            group_by=args.group_by,
            answer_index_base=args.answer_index_base,
            on_error=args.on_error,
            phi=args.phi,
            phi_engine=args.phi_engine,
            dedup=args.dedup,
        )
        loaded = config.load()
        card = loaded.card()
        lines = loaded.summary(card)
    print("\n".join(lines))
    if args.action == "report":
        print(card.to_json() if args.json else card.to_markdown())
    else:
        print(f"ok: {card.records} records pass every check")
    return 0


def _export(args: argparse.Namespace) -> int:
    from medlora import AdapterExporter, ExportConfig

    config = ExportConfig.from_file(args.config) if args.config else ExportConfig()
    import attrs

    if args.gguf:
        config = attrs.evolve(config, gguf_types=tuple(args.gguf))
    if args.threads is not None:
        config = attrs.evolve(config, threads=args.threads)
    out = Path(args.out) if args.out else Path(args.run_dir) / "export"
    result = AdapterExporter(Path(args.run_dir), config).export(out)
    print(f"export written to {result.out_dir}")
    text = result.parity.get("fidelity_text", {})
    print(
        f"fidelity on {text.get('positions', 0)} reply positions of {text.get('source', '?')}"
        " (reply top-1, KL, perplexity ratio to the reference; probe top-1):"
    )
    for row in result.parity_rows:
        got = row.agreement
        notes = (" imatrix" if got.imatrix else "") + ("" if row.passed else "  FAILED")
        print(
            f"  {row.artefact:<24} top-1 {_show(got.reply_top1, '.4f')}  "
            f"KL {_show(got.reply_kl, '.3g')}  ppl x{_show(got.ppl_ratio, '.4f')}  "
            f"probe top-1 {got.top1:.4f}{notes}"
        )
    return 0


def _show(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _serve(args: argparse.Namespace) -> int:
    from medlora._io import restore
    from medlora.serve import ServeConfig, exec_vllm, serve_gguf, vllm_command

    model = Path(args.model)
    restore(model)  # an export directory a killed run left beside its place
    api_key = args.api_key or os.environ.get("MEDLORA_API_KEY") or None
    if model.is_file():
        config = ServeConfig(
            host=args.host,
            port=args.port,
            api_key=api_key,
            model_alias=args.name,
            n_ctx=args.n_ctx,
            n_threads=args.threads,
        )
        serve_gguf(model, config)
        return 0
    command = vllm_command(
        model, host=args.host, port=args.port, api_key=api_key, name=args.name, base=args.base
    )
    import shlex

    print(shlex.join(command), flush=True)
    if args.print_only:
        return 0
    exec_vllm(command)
    return 0  # pragma: no cover - exec does not return


def _eval(args: argparse.Namespace) -> int:
    from medlora.eval import EvalConfig, compare_models, held_out_dataset, models_of_export

    export_dir = Path(args.export_dir)
    models = models_of_export(export_dir, include_base=not args.no_base)
    dataset = held_out_dataset(export_dir, data=args.data)
    config = EvalConfig(
        tasks=tuple(args.tasks),
        max_records=args.max_records,
        max_generation_records=args.max_generation_records,
        max_new_tokens=args.max_new_tokens,
        option_orders=args.option_orders,
    )
    out = Path(args.out) if args.out else export_dir / "eval"
    report = compare_models(models, dataset, out, config)
    print(report.markdown())
    print(f"written to {out}/eval.md, eval.json, eval.png")
    card = export_dir / "README.md"
    if card.is_file():  # the export's model card carries the comparison from now on
        from medlora._io import atomic_file
        from medlora.export import with_evaluation

        updated = with_evaluation(card.read_text(encoding="utf-8"), report.markdown())
        with atomic_file(card) as handle:
            handle.write(updated)
        print(f"model card updated: {card}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="medlora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_quickstart, _add_train, _add_data, _add_export, _add_serve, _add_eval):
        add(sub)
    return parser


def _add_quickstart(sub: Any) -> None:
    """``medlora quickstart``: train, export and ask a small model in one go."""
    quick = sub.add_parser(
        "quickstart",
        help="fine-tune SmolLM2-135M-Instruct on the embedded data, export it, ask the GGUF",
    )
    quick.add_argument("--out", default="medlora-quickstart", help="output directory")
    quick.add_argument(
        "--tiny",
        action="store_true",
        help="use a tiny model built in-process instead (no download at all)",
    )
    quick.add_argument(
        "--steps", type=int, help="QLoRA training steps (default 16; 160 with --tiny)"
    )
    quick.add_argument(
        "--pretrain-steps", type=int, default=120, help="pre-training steps of the --tiny model"
    )
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch and llama.cpp (default: all cores; on a busy machine, "
        "the free ones)",
    )
    quick.set_defaults(func=_quickstart)


def _add_train(sub: Any) -> None:
    """``medlora train CONFIG``."""
    train = sub.add_parser("train", help="train an adapter from a YAML/TOML config")
    train.add_argument("config", help="TrainingConfig file (.yaml, .toml or .json)")
    resume = train.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue from the latest checkpoint in output_dir (fresh start when none)",
    )
    resume.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start from step 0 even when output_dir holds checkpoints",
    )
    train.set_defaults(func=_train)


def _add_data(sub: Any) -> None:
    """``medlora data check|report FILE``."""
    data = sub.add_parser("data", help="check records, or show their data card, without training")
    data.add_argument("action", choices=["check", "report"], help="check: validate; report: card")
    data.add_argument(
        "file",
        help="records file (.jsonl .json .csv .parquet, a save_to_disk "
        "directory) or a training config whose data section to use",
    )
    data.add_argument("--format", default="auto", help="jsonl, json, csv, parquet or hf")
    data.add_argument("--kind", help="force one record kind")
    data.add_argument("--field-map", nargs="+", metavar="THEIRS=OURS", help="rename columns")
    data.add_argument("--group-by", help="patient/encounter id field")
    data.add_argument("--answer-index-base", type=int, default=0, choices=[0, 1])
    data.add_argument("--on-error", default="raise", choices=["raise", "skip"])
    data.add_argument("--phi", default="report", choices=["off", "report", "redact", "fail"])
    data.add_argument(
        "--phi-engine",
        default="auto",
        choices=["auto", "presidio", "patterns"],
        help="presidio finds names and places without cue words (the phi extra)",
    )
    data.add_argument("--dedup", default="off", choices=["off", "exact", "near"])
    data.add_argument("--json", action="store_true", help="report: the card as JSON")
    data.set_defaults(func=_data)


def _add_export(sub: Any) -> None:
    """``medlora export RUN_DIR``."""
    export = sub.add_parser("export", help="export a training run (adapter, merged, GGUF)")
    export.add_argument("run_dir", help="output_dir of a finished training run")
    export.add_argument("--out", help="export directory (default RUN_DIR/export)")
    export.add_argument("--config", help="ExportConfig file")
    export.add_argument("--gguf", nargs="+", metavar="TYPE", help="GGUF types, e.g. F16 Q4_K_M")
    export.add_argument(
        "--threads", type=int, help="CPU threads for torch and llama.cpp (ExportConfig.threads)"
    )
    export.set_defaults(func=_export)


def _add_serve(sub: Any) -> None:
    """``medlora serve MODEL``."""
    serve = sub.add_parser("serve", help="serve a GGUF (llama.cpp) or print/run `vllm serve`")
    serve.add_argument("model", help="a .gguf file, a merged HF directory or an adapter directory")
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require this bearer key (or set MEDLORA_API_KEY)")
    serve.add_argument("--name", help="model id clients send (default: file or dir name)")
    serve.add_argument("--n-ctx", type=int, default=2048, help="GGUF context length")
    serve.add_argument("--threads", type=int, help="GGUF CPU threads")
    serve.add_argument("--base", help="base model of an adapter (default: adapter_config.json)")
    serve.add_argument(
        "--print-only", action="store_true", help="for vLLM, print the command and exit"
    )
    serve.set_defaults(func=_serve)


def _add_eval(sub: Any) -> None:
    """``medlora eval EXPORT_DIR``."""
    evaluate = sub.add_parser("eval", help="compare base, adapter, merged and GGUF models")
    evaluate.add_argument("export_dir", help="an export directory (medlora export)")
    evaluate.add_argument("--out", help="output directory (default EXPORT_DIR/eval)")
    evaluate.add_argument(
        "--data", help="records file to evaluate on (default: exactly the run's held-out records)"
    )
    evaluate.add_argument(
        "--tasks",
        nargs="+",
        default=["perplexity", "multiple_choice", "generation"],
        choices=["perplexity", "multiple_choice", "generation"],
    )
    evaluate.add_argument("--max-records", type=int, help="records per task (default all)")
    evaluate.add_argument("--max-generation-records", type=int, default=8)
    evaluate.add_argument("--max-new-tokens", type=int, default=64)
    evaluate.add_argument(
        "--option-orders",
        type=int,
        default=1,
        help="score multiple choice under this many rotations of the options (a letter "
        "preference then counts for every option alike); also reports acc in every order",
    )
    evaluate.add_argument("--no-base", action="store_true", help="skip the base model")
    evaluate.set_defaults(func=_eval)


def _cuda_allocator_defaults() -> None:
    """Expandable segments (less fragmentation with varying batch shapes, as packing and
    padding give), set before CUDA starts and only when the user has set no allocator
    configuration (torch reads ``PYTORCH_ALLOC_CONF``, or the older ``PYTORCH_CUDA_ALLOC_CONF``)."""
    if "PYTORCH_ALLOC_CONF" not in os.environ:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medlora`` command; returns the exit status."""
    _cuda_allocator_defaults()
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.func(args))
    except MedLoraError as exc:
        print(f"medlora: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
