"""QLoRATrainer: one readable training loop over a 4-bit base with LoRA adapters."""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from medlora._errors import DatasetError, OutOfMemoryError, TrainingError
from medlora._hub import load_tokenizer, resolve_model
from medlora._io import atomic_file, write_json
from medlora._versions import library_versions
from medlora.data import ClinicalDataset, TokenizedExample, collate
from medlora.data._tokenize import IGNORE_INDEX
from medlora.training._config import TrainingConfig
from medlora.training._model import attach_lora, count_4bit_linear, load_base_model

TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


@attrs.frozen(kw_only=True)
class TrainingResult:
    """What a finished run produced and measured."""

    run_dir: Path
    """The run directory (``medlora.json``, ``log.jsonl``, ``adapter/``)."""
    adapter_dir: Path
    """The final peft adapter (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    base_model: Path
    """The local directory of the base model the adapter belongs to."""
    steps: int
    """Optimizer steps taken."""
    train_tokens: int
    """Supervised (non-padding) tokens seen."""
    initial_eval_loss: float
    """Held-out loss of the base model before training (NaN without a held-out set)."""
    final_eval_loss: float
    """Held-out loss after training."""
    train_losses: tuple[float, ...]
    """Mean training loss of each optimizer step."""
    seconds: float
    """Wall time of the training loop."""
    quantized_modules: int
    """``Linear4bit`` modules in the model during training (0 for plain LoRA)."""

    @property
    def final_eval_perplexity(self) -> float:
        """``exp(final_eval_loss)``."""
        return math.exp(self.final_eval_loss)


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
    model: Any = attrs.field(default=None, init=False, repr=False)
    tokenizer: Any = attrs.field(default=None, init=False, repr=False)

    def _datasets(self) -> tuple[ClinicalDataset, ClinicalDataset | None]:
        cfg = self.config
        dataset = self.dataset
        if dataset is None:
            opts: dict[str, Any] = {"system_prompt": cfg.system_prompt}
            dataset = (
                ClinicalDataset.from_jsonl(cfg.data, **opts)
                if cfg.data
                else ClinicalDataset.default(**opts)
            )
        if self.eval_dataset is not None or cfg.validation_fraction == 0:
            return dataset, self.eval_dataset
        return dataset.split(test_size=cfg.validation_fraction, seed=cfg.seed)

    def _tokenize(self, dataset: ClinicalDataset) -> list[TokenizedExample]:
        examples = dataset.tokenize(self.tokenizer, max_seq_len=self.config.max_seq_len)
        kept = [e for e in examples if any(label != IGNORE_INDEX for label in e.labels)]
        if not kept:
            raise DatasetError(
                "no example has a supervised token left after truncation; raise max_seq_len"
            )
        return kept

    def setup(self) -> None:
        """Load tokenizer and model (4-bit base + LoRA); called by :meth:`train` if needed."""
        import torch

        cfg = self.config
        base = resolve_model(cfg.model)
        self.tokenizer = load_tokenizer(base)
        torch.manual_seed(cfg.seed)
        checkpointing = cfg.gradient_checkpointing == "on" or (
            cfg.gradient_checkpointing == "auto" and torch.cuda.is_available()
        )
        model = load_base_model(base, cfg.quantization)
        self.model = attach_lora(
            model, cfg.lora, quantized=cfg.quantization is not None, checkpointing=checkpointing
        )

    def evaluate(self, examples: Sequence[TokenizedExample]) -> float:
        """Mean loss per supervised token over ``examples`` (no gradients)."""
        import torch

        model = self.model
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        device = next(p for p in model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(examples), self.config.micro_batch_size):
                batch = collate(
                    examples[start : start + self.config.micro_batch_size],
                    pad_id=self.tokenizer.pad_token_id,
                )
                batch = {k: v.to(device) for k, v in batch.items()}
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits  # (b, t, vocab)
                loss, n = _token_loss(logits, batch["labels"])
                total += loss.item() * n
                count += n
        model.train(was_training)
        return total / max(count, 1)

    def train(self, *, progress: bool = True) -> TrainingResult:
        """Run the loop; write the adapter, ``log.jsonl`` and ``medlora.json`` to the run dir."""
        import torch
        from tqdm.auto import tqdm
        from transformers import get_scheduler

        cfg = self.config
        run_dir = Path(cfg.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.model is None:
            self.setup()
        train_set, eval_set = self._datasets()
        train_examples = self._tokenize(train_set)
        eval_examples = self._tokenize(eval_set) if eval_set is not None and len(eval_set) else []
        model, tokenizer = self.model, self.tokenizer
        device = next(p for p in model.parameters()).device
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=cfg.max_steps,
        )
        order = _Order(len(train_examples), seed=cfg.seed)
        initial = self.evaluate(eval_examples) if eval_examples else float("nan")

        log = (run_dir / "log.jsonl").open("w", encoding="utf-8")
        losses: list[float] = []
        seen_tokens = 0
        started = time.perf_counter()
        bar = tqdm(total=cfg.max_steps, desc="training", unit="step", disable=not progress)
        model.train()
        try:
            for step in range(1, cfg.max_steps + 1):
                step_loss, step_tokens = 0.0, 0
                micro = [
                    [train_examples[i] for i in order.take(cfg.micro_batch_size)]
                    for _ in range(cfg.grad_accum_steps)
                ]
                n_step = sum(
                    sum(lbl != IGNORE_INDEX for lbl in e.labels[1:]) for m in micro for e in m
                )
                for examples in micro:
                    batch = {
                        k: v.to(device)
                        for k, v in collate(examples, pad_id=tokenizer.pad_token_id).items()
                    }
                    logits = model(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    ).logits
                    loss_sum, n = _token_loss(logits, batch["labels"], reduction="sum")
                    (loss_sum / max(n_step, 1)).backward()  # mean over the whole step's tokens
                    step_loss += loss_sum.item()
                    step_tokens += n
                grad_norm = (
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm).item()
                    if cfg.max_grad_norm > 0
                    else float("nan")
                )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                mean = step_loss / max(step_tokens, 1)
                if not math.isfinite(mean):
                    raise TrainingError(
                        f"loss became {mean} at step {step}; lower learning_rate or check the data"
                    )
                losses.append(mean)
                seen_tokens += step_tokens
                elapsed = time.perf_counter() - started
                record: dict[str, Any] = {
                    "step": step,
                    "loss": mean,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "tokens": seen_tokens,
                    "tokens_per_s": seen_tokens / elapsed,
                }
                if eval_examples and cfg.eval_every and step % cfg.eval_every == 0:
                    record["eval_loss"] = self.evaluate(eval_examples)
                if step % cfg.log_every == 0 or "eval_loss" in record:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                bar.update()
        except torch.OutOfMemoryError as exc:
            raise OutOfMemoryError(
                "out of accelerator memory: lower micro_batch_size (raise grad_accum_steps to "
                "keep the global batch), set gradient_checkpointing: on, or lower max_seq_len"
            ) from exc
        finally:
            bar.close()
            log.close()
        seconds = time.perf_counter() - started
        final = self.evaluate(eval_examples) if eval_examples else float("nan")
        adapter_dir = self._save_adapter(run_dir)
        result = TrainingResult(
            run_dir=run_dir,
            adapter_dir=adapter_dir,
            base_model=resolve_model(cfg.model),
            steps=cfg.max_steps,
            train_tokens=seen_tokens,
            initial_eval_loss=initial,
            final_eval_loss=final,
            train_losses=tuple(losses),
            seconds=seconds,
            quantized_modules=count_4bit_linear(model),
        )
        write_json(
            run_dir / "medlora.json",
            {
                "kind": "training-run",
                "config": cfg.to_dict(),
                "base_model": str(result.base_model),
                "data_fingerprint": train_set.fingerprint,
                "train_records": len(train_set),
                "eval_records": 0 if eval_set is None else len(eval_set),
                "metrics": {
                    "initial_eval_loss": initial,
                    "final_eval_loss": final,
                    "steps": cfg.max_steps,
                    "train_tokens": seen_tokens,
                    "seconds": seconds,
                    "final_train_loss": losses[-1],
                },
                "versions": library_versions(),
            },
        )
        return result

    def _save_adapter(self, run_dir: Path) -> Path:
        """Write the adapter atomically to ``run_dir/adapter`` with the tokenizer beside it."""
        from medlora._io import atomic_dir

        target = run_dir / "adapter"
        base = resolve_model(self.config.model)
        with atomic_dir(target) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            for name in TOKENIZER_FILES:
                if (base / name).is_file():
                    shutil.copy2(base / name, tmp / name)
            _set_base_model(tmp / "adapter_config.json", str(base))
        return target


def _set_base_model(config_path: Path, base: str) -> None:
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = base
    with atomic_file(config_path) as handle:
        json.dump(data, handle, indent=2)


def _token_loss(logits: Any, labels: Any, *, reduction: str = "mean") -> tuple[Any, int]:
    """Next-token cross-entropy over supervised positions; returns (loss, token count)."""
    import torch

    shift_logits = logits[:, :-1, :].float()  # (batch, seq-1, vocab)
    shift_labels = labels[:, 1:]  # (batch, seq-1)
    n = int((shift_labels != IGNORE_INDEX).sum().item())
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return (loss / max(n, 1) if reduction == "mean" else loss), n


class _Order:
    """Endless, seeded, epoch-wise shuffled example order."""

    def __init__(self, n: int, *, seed: int) -> None:
        self.n, self.rng, self.queue = n, random.Random(seed), list[int]()

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if not self.queue:
                self.queue = list(range(self.n))
                self.rng.shuffle(self.queue)
            out.append(self.queue.pop())
        return out
