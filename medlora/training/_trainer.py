"""QLoRATrainer: one readable training loop over a 4-bit base with LoRA adapters.

The loop runs on accelerate: one process on CPU or one GPU, or several under
``accelerate launch`` / ``torchrun`` (DDP) with the same script and config.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from medlora._errors import ConfigError, DatasetError, OutOfMemoryError, TrainingError
from medlora._hub import TOKENIZER_FILES, load_tokenizer, resolve_model
from medlora._io import write_json
from medlora.data import (
    ClinicalDataset,
    PreparedData,
    TokenizedExample,
    collate,
    collate_packed,
)
from medlora.training import _checkpoint as ckpt
from medlora.training._batches import ExampleOrder, step_batches
from medlora.training._callbacks import (
    JsonlLogger,
    dispatch,
    plot_losses,
    tensorboard_logger,
)
from medlora.training._config import TrainingConfig
from medlora.training._datasets import run_records, split_records
from medlora.training._loss import causal_lm_loss, supervised_tokens, train_micro_step
from medlora.training._model import attach_lora, count_4bit_linear, load_base_model
from medlora.training._result import TrainingResult, run_record

OOM_ADVICE = (
    "out of accelerator memory: lower micro_batch_size (raise grad_accum_steps to keep the "
    "global batch), set gradient_checkpointing: on, or lower max_seq_len"
)

__all__ = ["TOKENIZER_FILES", "QLoRATrainer", "TrainingResult"]


@attrs.define
class QLoRATrainer:
    """Train LoRA adapters on a frozen 4-bit NF4 base."""

    config: TrainingConfig
    """What to train and how."""
    dataset: ClinicalDataset | None = None
    """Training records; by default ``config.data`` (or the embedded synthetic set), split by
    patient into train and held-out parts."""
    eval_dataset: ClinicalDataset | None = None
    """Held-out records; by default the split of ``dataset``."""
    callbacks: Sequence[object] = ()
    """Objects with any of the :class:`Callback` hooks ``on_step``, ``on_eval``, ``on_save``."""
    model: Any = attrs.field(default=None, init=False, repr=False)
    tokenizer: Any = attrs.field(default=None, init=False, repr=False)

    def _datasets(self) -> tuple[ClinicalDataset, ClinicalDataset | None]:
        dataset = self.dataset if self.dataset is not None else run_records(self.config)
        if self.eval_dataset is not None:
            return dataset, self.eval_dataset
        return split_records(dataset, self.config)

    def _prepare(self, dataset: ClinicalDataset, run_dir: Path, *, pack: bool) -> PreparedData:
        """Tokenized (optionally packed) examples, cached in the run directory by fingerprint;
        examples left with no supervised token are dropped by ``prepare``."""
        prepared = dataset.prepare(
            self.tokenizer,
            max_seq_len=self.config.max_seq_len,
            pack=pack,
            cache_dir=run_dir / "data-cache",
        )
        if not prepared.examples:
            raise DatasetError(
                "no example has a supervised token left after truncation; raise max_seq_len"
            )
        return prepared

    def _train_items(
        self, dataset: ClinicalDataset, run_dir: Path
    ) -> tuple[list[Any], Callable[[list[Any]], dict[str, Any]]]:
        """Training items (examples, or packed rows of them) and the function batching them."""
        cfg, pad_id = self.config, self.tokenizer.pad_token_id
        prepared = self._prepare(dataset, run_dir, pack=cfg.packing)
        if not cfg.packing:

            def padded(chunk: list[Any]) -> dict[str, Any]:
                batch: dict[str, Any] = collate(chunk, pad_id=pad_id)
                batch["input_tokens"] = int(batch["attention_mask"].sum())
                return batch

            return list(prepared.examples), padded

        def packed(chunk: list[Any]) -> dict[str, Any]:
            batch: dict[str, Any] = collate_packed(chunk, pad_id=pad_id)
            batch["input_tokens"] = sum(len(e) for row in chunk for e in row)
            return batch

        return prepared.rows(), packed

    def setup(self, device: Any = None) -> None:
        """Load tokenizer and model (4-bit base + LoRA); called by :meth:`train` if needed."""
        import torch

        cfg = self.config
        base = resolve_model(cfg.model)
        self.tokenizer = load_tokenizer(base)
        torch.manual_seed(cfg.seed)
        checkpointing = cfg.gradient_checkpointing == "on" or (
            cfg.gradient_checkpointing == "auto" and torch.cuda.is_available()
        )
        model = load_base_model(base, cfg.quantization, device=device)
        if device is not None and cfg.quantization is None:
            model.to(device)
        self.model = attach_lora(
            model, cfg.lora, quantized=cfg.quantization is not None, checkpointing=checkpointing
        )

    def evaluate(self, examples: Sequence[TokenizedExample], *, accelerator: Any = None) -> float:
        """Mean loss per supervised token over ``examples`` (no gradients; sharded over
        processes when ``accelerator`` runs several)."""
        import torch

        model, cfg = self.model, self.config
        rank, world = (
            (0, 1)
            if accelerator is None
            else (accelerator.process_index, accelerator.num_processes)
        )
        was_training = model.training
        model.eval()
        device = next(p for p in model.parameters()).device
        total = torch.zeros(2, dtype=torch.float64, device=device)  # (loss sum, tokens)
        mine = list(examples)[rank::world]
        with torch.no_grad():
            for start in range(0, len(mine), cfg.micro_batch_size):
                batch = collate(
                    mine[start : start + cfg.micro_batch_size], pad_id=self.tokenizer.pad_token_id
                )
                batch = {k: v.to(device) for k, v in batch.items()}
                loss, n = causal_lm_loss(
                    model, model.get_output_embeddings(), batch, chunk_tokens=cfg.loss_chunk_tokens
                )
                total += torch.tensor([loss.item(), n], dtype=torch.float64, device=device)
        if accelerator is not None and world > 1:
            total = accelerator.reduce(total, reduction="sum")
        model.train(was_training)
        return float(total[0] / total[1].clamp(min=1))

    def _optimizer(self, params: list[Any], device: Any) -> Any:
        import torch

        cfg = self.config
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        if device.type != "cuda":
            raise ConfigError(
                "optimizer 'paged_adamw_8bit' needs a CUDA GPU (bitsandbytes pages its state "
                "between GPU and CPU memory); use optimizer: adamw on this machine.",
                field="optimizer",
            )
        from medlora._optional import require

        bnb = require("bitsandbytes", "the paged 8-bit AdamW optimizer")
        return bnb.optim.PagedAdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def train(self, *, progress: bool = True, resume: bool | None = None) -> TrainingResult:
        """Run the loop; write the adapter, logs, checkpoints and ``medlora.json``.

        Args:
            progress: Show a progress bar (loss, tokens/s).
            resume: Continue from the latest checkpoint in the run directory (default:
                ``config.resume``); starts fresh when there is none.
        """
        import torch
        from accelerate import Accelerator
        from tqdm.auto import tqdm
        from transformers import get_scheduler

        cfg = self.config
        resume = cfg.resume if resume is None else resume
        timings = dict.fromkeys(("setup", "train", "eval", "save"), 0.0)
        started = time.perf_counter()
        acc = Accelerator(cpu=not torch.cuda.is_available())  # gloo DDP on CPU-only machines
        main = acc.is_main_process
        run_dir = Path(cfg.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.model is None:
            self.setup(device=acc.device)
        train_set, eval_set = self._datasets()
        train_items, collate_fn = self._train_items(train_set, run_dir)
        eval_examples = (
            list(self._prepare(eval_set, run_dir, pack=False).examples)
            if eval_set is not None and len(eval_set)
            else []
        )
        peft_model = self.model
        model = acc.prepare_model(peft_model)  # DDP- (or FSDP-) wrapped under several processes
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = self._optimizer(params, acc.device)
        scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=cfg.max_steps,
        )
        order = ExampleOrder(len(train_items), seed=cfg.seed)
        head = peft_model.get_output_embeddings()

        st: dict[str, Any] = {
            "step": 0,
            "tokens": 0,
            "input_tokens": 0,
            "losses": [],
            "best_eval_loss": math.inf,
            "best_step": None,
            "bad_evals": 0,
            "initial_eval_loss": math.nan,
        }
        latest = ckpt.checkpoint_dirs(run_dir)[-1:] if resume else []
        resumed_from = None
        if latest:
            st, order_state = ckpt.load_checkpoint(
                latest[0], model=peft_model, optimizer=optimizer, scheduler=scheduler
            )
            order.set_state(order_state)
            resumed_from = st["step"]
        elif eval_examples:
            st["initial_eval_loss"] = self.evaluate(eval_examples, accelerator=acc)
        st["best_eval_loss"] = math.inf if st["best_step"] is None else st["best_eval_loss"]
        timings["setup"] = time.perf_counter() - started

        jsonl = (
            JsonlLogger(run_dir / "log.jsonl", log_every=cfg.log_every, resume_step=st["step"])
            if main
            else None
        )
        board = tensorboard_logger(run_dir / "tensorboard") if main and cfg.tensorboard else None
        hooks = [h for h in (jsonl, board) if h is not None] + list(self.callbacks if main else ())
        last_saved = st["step"]

        def save() -> None:
            nonlocal last_saved
            t = time.perf_counter()
            if main:
                path = ckpt.save_checkpoint(
                    run_dir,
                    model=peft_model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    order=order.state(),
                    state=st,
                    keep=cfg.keep_checkpoints,
                )
            acc.wait_for_everyone()
            last_saved = st["step"]
            timings["save"] += time.perf_counter() - t
            if main:
                dispatch(hooks, "on_save", st["step"], path)

        stopped_early = False
        bar = tqdm(
            total=cfg.max_steps,
            initial=st["step"],
            desc="training",
            unit="step",
            disable=not (progress and main),
        )
        model.train()
        try:
            while st["step"] < cfg.max_steps and not stopped_early:
                t = time.perf_counter()
                micro = step_batches(
                    order,
                    train_items,
                    micro_batch_size=cfg.micro_batch_size,
                    grad_accum_steps=cfg.grad_accum_steps,
                    collate_fn=collate_fn,
                    acc=acc,
                )
                counts = torch.tensor(
                    [
                        sum(supervised_tokens(b) for b in micro),
                        sum(int(b["input_tokens"]) for b in micro),
                    ],
                    device=acc.device,
                )
                n_step, n_input = acc.reduce(counts, reduction="sum").tolist()
                loss_sum = 0.0
                for i, batch in enumerate(micro):  # no gradient sync until the last micro-batch
                    sync = i == len(micro) - 1
                    with contextlib.nullcontext() if sync else acc.no_sync(model):
                        part, _ = train_micro_step(
                            model,
                            head,
                            batch,
                            scale=acc.num_processes / max(n_step, 1),
                            chunk_tokens=cfg.loss_chunk_tokens,
                            backward=acc.backward,
                        )
                    loss_sum += part
                grad_norm = (
                    float(acc.clip_grad_norm_(params, cfg.max_grad_norm))
                    if cfg.max_grad_norm > 0
                    else float("nan")
                )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                total = acc.reduce(torch.tensor([loss_sum], device=acc.device), reduction="sum")
                mean = float(total.item()) / max(n_step, 1)  # (sum over all processes) / tokens
                st["step"] += 1
                step = st["step"]
                if not math.isfinite(mean):
                    raise TrainingError(
                        f"loss became {mean} at step {step}; lower learning_rate or check the data"
                    )
                st["losses"].append(mean)
                st["tokens"] += int(n_step)
                st["input_tokens"] += int(n_input)
                timings["train"] += time.perf_counter() - t
                logs = {
                    "step": step,
                    "loss": mean,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "tokens": st["tokens"],
                    "tokens_per_s": st["input_tokens"] / timings["train"],
                }
                if main:
                    dispatch(hooks, "on_step", step, logs)
                bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{logs['tokens_per_s']:.0f}")
                bar.update()
                if eval_examples and cfg.eval_every and step % cfg.eval_every == 0:
                    stopped_early = self._periodic_eval(
                        eval_examples, acc, st, hooks, run_dir, timings
                    )
                if cfg.save_every and step % cfg.save_every == 0:
                    save()
        except KeyboardInterrupt:
            if st["step"] > last_saved:
                save()
            raise
        except torch.OutOfMemoryError as exc:
            raise OutOfMemoryError(OOM_ADVICE) from exc
        finally:
            bar.close()
            for hook in (jsonl, board):
                if hook is not None:
                    hook.close()
        return self._finish(
            acc,
            st,
            eval_examples,
            train_set,
            eval_set,
            run_dir,
            stopped_early=stopped_early,
            resumed_from=resumed_from,
            timings=timings,
            started=started,
        )

    def _periodic_eval(
        self,
        examples: list[TokenizedExample],
        acc: Any,
        st: dict[str, Any],
        hooks: list[Any],
        run_dir: Path,
        timings: dict[str, float],
    ) -> bool:
        """Evaluate, keep the best adapter, and say whether early stopping ends the run."""
        cfg, t = self.config, time.perf_counter()
        loss = self.evaluate(examples, accelerator=acc)
        if acc.is_main_process:
            dispatch(
                hooks,
                "on_eval",
                st["step"],
                {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0))},
            )
        if loss < st["best_eval_loss"] - cfg.early_stopping_min_delta:
            st.update(best_eval_loss=loss, best_step=st["step"], bad_evals=0)
            if cfg.select_best and acc.is_main_process:
                self._save_adapter(run_dir / "best-adapter")
            acc.wait_for_everyone()
        else:
            st["bad_evals"] += 1
        timings["eval"] += time.perf_counter() - t
        return bool(cfg.early_stopping_patience and st["bad_evals"] >= cfg.early_stopping_patience)

    def _finish(
        self,
        acc: Any,
        st: dict[str, Any],
        eval_examples: list[TokenizedExample],
        train_set: ClinicalDataset,
        eval_set: ClinicalDataset | None,
        run_dir: Path,
        *,
        stopped_early: bool,
        resumed_from: int | None,
        timings: dict[str, float],
        started: float,
    ) -> TrainingResult:
        cfg, main = self.config, acc.is_main_process
        source = "last"
        best_dir = run_dir / "best-adapter"
        if cfg.select_best and st["best_step"] is not None and st["best_step"] != st["step"]:
            ckpt.load_adapter_weights(self.model, best_dir)
            source = "best"
        t = time.perf_counter()
        final = self.evaluate(eval_examples, accelerator=acc) if eval_examples else math.nan
        timings["eval"] += time.perf_counter() - t
        adapter_dir = run_dir / "adapter"
        if main:
            self._save_adapter(adapter_dir)
            if cfg.plot and (run_dir / "log.jsonl").is_file():
                plot_losses(run_dir / "log.jsonl", run_dir / "loss.png")
        acc.wait_for_everyone()
        seconds = time.perf_counter() - started
        best = st["best_step"]
        result = TrainingResult(
            run_dir=run_dir,
            adapter_dir=adapter_dir,
            base_model=resolve_model(cfg.model),
            steps=st["step"],
            train_tokens=st["tokens"],
            initial_eval_loss=st["initial_eval_loss"],
            final_eval_loss=final,
            train_losses=tuple(st["losses"]),
            seconds=seconds,
            quantized_modules=count_4bit_linear(self.model),
            best_step=best,
            best_eval_loss=st["best_eval_loss"] if best is not None else math.nan,
            stopped_early=stopped_early,
            resumed_from_step=resumed_from,
            checkpoints=tuple(ckpt.checkpoint_dirs(run_dir)),
            timings=timings,
        )
        if main:
            adapter_step = best if source == "best" else st["step"]
            record = run_record(result, cfg.to_dict(), train_set, eval_set, source, adapter_step)
            record["world_size"] = acc.num_processes
            write_json(run_dir / "medlora.json", record)
        return result

    def _save_adapter(self, target: Path) -> Path:
        return ckpt.save_adapter(self.model, resolve_model(self.config.model), target)
