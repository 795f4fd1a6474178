"""QLoRATrainer: one readable training loop over a 4-bit base with LoRA adapters.

The loop runs on accelerate: one process on CPU or one GPU, or several under
``accelerate launch`` / ``torchrun`` (DDP) with the same script and config.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from medlora._deprecated import accepts_old_keywords, renamed, warn_old_attribute
from medlora._errors import ConfigError, DatasetError, OutOfMemoryError, TrainingError
from medlora._hub import check_supported, load_tokenizer, resolve_model
from medlora._io import disk_space, recover
from medlora.data import (
    ArrowDataset,
    ClinicalDataset,
    PreparedData,
    TokenizedExample,
    collate,
    collate_packed,
    reply_end_token,
)
from medlora.training import _checkpoint as ckpt
from medlora.training._batches import ExampleOrder, StepLoader, to_device, with_varlen_kwargs
from medlora.training._callbacks import (
    JsonlLogger,
    dispatch,
    plot_losses,
    tensorboard_logger,
)
from medlora.training._config import TrainingConfig
from medlora.training._datasets import (
    RunData,
    describe_split,
    run_data,
    run_data_config,
    split_records,
)
from medlora.training._loss import with_loss_index
from medlora.training._model import (
    PADDING_FREE_ATTENTION,
    Precision,
    attach_lora,
    count_4bit_linear,
    decide_checkpointing,
    load_base_model,
    resolve_attention,
    resolve_precision,
)
from medlora.training._record import RunDataCard, RunRecord
from medlora.training._result import TrainingResult
from medlora.training._state import LoopState, Run

NO_EXAMPLES = "no example has a supervised token left after truncation; raise max_seq_len"
log = logging.getLogger("medlora")

OOM_ADVICE = (
    "out of accelerator memory: lower micro_batch_size (raise grad_accum_steps to keep the "
    "global batch), set gradient_checkpointing: on, or lower max_seq_len"
)


@contextlib.contextmanager
def oom_as_error(advice: str = OOM_ADVICE) -> Iterator[None]:
    """Turn torch's out-of-memory error into :class:`OutOfMemoryError` with ``advice``."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfMemoryError(advice) from exc


__all__ = ["QLoRATrainer", "TrainingResult"]


@accepts_old_keywords(renamed(dataset="train_dataset"))
@attrs.define
class QLoRATrainer:
    """Train LoRA adapters on a frozen 4-bit NF4 base.

    ``QLoRATrainer(config, train_dataset=..., eval_dataset=...)``, as in TRL; the earlier
    keyword ``dataset=`` still works, with a :class:`DeprecationWarning`, until the next release.
    """

    config: TrainingConfig
    """What to train and how."""
    train_dataset: ClinicalDataset | ArrowDataset | None = None
    """Training records (in memory, or on disk: :class:`~medlora.ArrowDataset`); by default
    ``config.data`` (or the embedded synthetic set), split by patient into train and
    held-out parts."""
    eval_dataset: ClinicalDataset | None = None
    """Held-out records; by default the split of ``train_dataset``."""
    callbacks: Sequence[object] = ()
    """Objects with any of the :class:`Callback` hooks ``on_step``, ``on_eval``, ``on_save``."""
    model: Any = attrs.field(default=None, init=False, repr=False)
    tokenizer: Any = attrs.field(default=None, init=False, repr=False)
    precision: Precision | None = attrs.field(default=None, init=False, repr=False)
    """How the model computes (set by :meth:`setup`)."""
    runtime: dict[str, Any] = attrs.field(factory=dict, init=False, repr=False)
    """The choices :meth:`setup` made for this machine (precision, attention, gradient
    checkpointing, loss, optimizer); written to ``medlora.json``."""
    objective: Any = attrs.field(default=None, init=False, repr=False)
    """The model and its loss as one module (sharded in place under FSDP)."""
    _data: RunData | None = attrs.field(default=None, init=False, repr=False)
    _token_lengths: list[int] = attrs.field(factory=list, init=False, repr=False)

    @property
    def dataset(self) -> ClinicalDataset | ArrowDataset | None:
        """Deprecated name of :attr:`train_dataset`."""
        warn_old_attribute("QLoRATrainer.dataset", "QLoRATrainer.train_dataset")
        return self.train_dataset

    def check_data(self, *, progress: bool = True) -> RunData:
        """Load, validate and split the records, before any model loads (kept for
        :meth:`train`); ``RunData.report()`` is the data report ``medlora train`` prints.
        ``progress``: the Arrow backend's progress bars (``train(progress=False)`` hides them).

        Raises:
            DatasetError: Bad records, each named by file, line and field.
        """
        if self._data is not None:
            return self._data
        cfg = self.config
        if self.train_dataset is None and self.eval_dataset is None:
            self._data = run_data(cfg, progress=progress)
            return self._data
        loaded = (
            None if self.train_dataset is not None else run_data_config(cfg).load(progress=progress)
        )
        train: ClinicalDataset | ArrowDataset | None = (
            self.train_dataset if loaded is None else loaded.records
        )
        if train is None:  # pragma: no cover - one of the two is set
            raise DatasetError("no training records")
        held = self.eval_dataset
        if held is None:
            train, held = split_records(train, cfg)
        self._data = RunData.of(train, held, describe_split(held, "given", cfg), loaded)
        return self._data

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
            raise DatasetError(NO_EXAMPLES)
        return prepared

    def _train_items(
        self, dataset: ClinicalDataset | ArrowDataset, run_dir: Path, *, progress: bool = True
    ) -> tuple[Sequence[Any], Callable[[list[Any]], dict[str, Any]]]:
        """Training items (examples, or packed rows of them) and the function batching them;
        from the Arrow backend, rows read from disk as they are drawn."""
        cfg, pad_id = self.config, self.tokenizer.pad_token_id
        items: Sequence[Any]
        if isinstance(dataset, ArrowDataset):
            on_disk = dataset.prepare(
                self.tokenizer,
                max_seq_len=cfg.max_seq_len,
                pack=cfg.packing,
                cache_dir=run_dir / "data-cache",
                progress=progress,
            )
            if not on_disk.examples:
                raise DatasetError(NO_EXAMPLES)
            self._token_lengths, items = on_disk.lengths(), on_disk.items()
        else:
            prepared = self._prepare(dataset, run_dir, pack=cfg.packing)
            self._token_lengths = [len(e) for e in prepared.examples]
            items = prepared.rows() if cfg.packing else list(prepared.examples)
        if not cfg.packing:

            def padded(chunk: list[Any]) -> dict[str, Any]:
                return dict(collate(chunk, pad_id=pad_id))

            return items, padded
        attention = self.model.config._attn_implementation
        dense = attention not in PADDING_FREE_ATTENTION
        varlen = attention.startswith("flash_attention")

        def packed(chunk: list[Any]) -> dict[str, Any]:
            batch = dict(collate_packed(chunk, pad_id=pad_id, dense_mask=dense))
            return with_varlen_kwargs(batch) if varlen else batch

        return items, packed

    def setup(self, device: Any = None) -> None:
        """Load tokenizer and model (4-bit base + LoRA) and decide how they compute here
        (:attr:`runtime`); called by :meth:`train` if needed."""
        import torch

        from medlora.training._objective import CausalLMLoss

        cfg = self.config
        base = resolve_model(cfg.model)
        check_supported(base)  # before the tokenizer or any weights load
        self.tokenizer = load_tokenizer(base)
        if reply_end_token(self.tokenizer) is None:
            warnings.warn(
                f"the chat template of {cfg.model} writes no special token after an assistant "
                "reply, so the model cannot learn where a reply ends and generation will not "
                "stop by itself; give the tokenizer a template that ends each reply with EOS "
                "(or another special token)",
                stacklevel=2,
            )
        torch.manual_seed(cfg.seed)
        dev = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        precision = resolve_precision(cfg.mixed_precision, dev.type)
        storage = None
        if cfg.fsdp and cfg.quantization is not None and cfg.quantization.quant_storage == "auto":
            storage = str(precision.dtype).removeprefix("torch.")  # one dtype per FSDP unit
        attention = resolve_attention(cfg.attn_implementation, dev.type)
        model = load_base_model(
            base,
            cfg.quantization,
            device=device,
            dtype=precision.dtype,
            quant_storage=storage,
            attn_implementation=attention,
        )
        if device is not None and cfg.quantization is None:
            with oom_as_error():
                model.to(device)
        checkpointing, why = decide_checkpointing(
            cfg.gradient_checkpointing,
            model.config,
            tokens=cfg.micro_batch_size * cfg.max_seq_len,
            dtype=precision.dtype,
            device=dev,
        )
        self.model = attach_lora(model, cfg.lora, checkpointing=checkpointing, precision=precision)
        loss_impl = cfg.loss_impl
        if loss_impl == "auto":
            loss_impl = "fused" if dev.type == "cuda" else "chunked"
        self.objective = CausalLMLoss(
            self.model, impl=loss_impl, chunk_tokens=cfg.loss_chunk_tokens, precision=precision
        )
        self.precision = precision
        self.runtime = {
            "device": str(dev),
            "mixed_precision": precision.name,
            "attn_implementation": attention,
            "packed_attention": (
                "position_ids" if attention in PADDING_FREE_ATTENTION else "dense mask"
            ),
            "gradient_checkpointing": checkpointing,
            "gradient_checkpointing_reason": why,
            "loss_impl": loss_impl,
        }
        log.info("medlora runtime: %s", self.runtime)

    def evaluate(self, examples: Sequence[TokenizedExample], *, accelerator: Any = None) -> float:
        """Mean loss per supervised token over ``examples`` (no gradients; sharded over
        processes when ``accelerator`` runs several). Reads the device once."""
        import torch

        cfg, objective = self.config, self.objective
        rank, world = (
            (0, 1)
            if accelerator is None
            else (accelerator.process_index, accelerator.num_processes)
        )
        was_training = objective.training
        objective.eval()
        device = accelerator.device if accelerator is not None else self.model.device
        everything = list(examples)
        mine = everything[rank::world]
        per_rank = -(-len(everything) // world)
        mb = cfg.micro_batch_size
        loss = torch.zeros((), dtype=torch.float64, device=device)
        tokens = 0
        with torch.no_grad(), oom_as_error():
            # The same number of forwards on every rank (FSDP gathers weights per forward);
            # a rank out of examples runs its first again with weight 0.
            for start in range(0, per_rank, mb):
                chunk, weight = mine[start : start + mb], 1
                if not chunk:
                    chunk, weight = everything[:1], 0
                batch = with_loss_index(dict(collate(chunk, pad_id=self.tokenizer.pad_token_id)))
                tokens += weight * int(batch["loss_targets"].shape[0])
                loss += objective(**to_device(batch, device)).double() * weight
        total = torch.stack([loss, torch.tensor(float(tokens), dtype=torch.float64).to(device)])
        if accelerator is not None and world > 1:
            total = accelerator.reduce(total, reduction="sum")
        objective.train(was_training)
        mean, count = total.tolist()
        return float(mean / max(count, 1.0))

    def _optimizer(self, params: list[Any], device: Any) -> Any:
        import torch

        cfg = self.config
        if cfg.optimizer == "adamw":
            fused = device.type == "cuda"  # one kernel for all parameters, no host sync
            self.runtime["optimizer"] = "adamw (fused)" if fused else "adamw"
            return torch.optim.AdamW(
                params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused or None
            )
        self.runtime["optimizer"] = "paged_adamw_8bit"
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

        Raises:
            TrainingError: Among others, when the disk (or quota) is full: it names the run
                directory, the space needed and the space free; every checkpoint and adapter
                written before stays intact.
        """
        run_dir = Path(self.config.output_dir)
        hint = "free some space or choose another output_dir, then resume: true"
        with disk_space(TrainingError, run_dir, "training", hint=hint):
            return self._train(progress=progress, resume=resume)

    def _train(self, *, progress: bool, resume: bool | None) -> TrainingResult:
        """Set up, step until ``max_steps`` (or early stopping), then finish."""
        run = self._begin(
            resume=self.config.resume if resume is None else resume, progress=progress
        )
        self._open_logs(run, progress=progress)
        try:
            with oom_as_error():
                while run.state.step < self.config.max_steps and not run.stopped_early:
                    self._advance(run)
        except KeyboardInterrupt:
            if run.state.step > run.last_saved:
                self._save(run)
            raise
        finally:
            run.close()
        self._flush(run)
        return self._finish(run)

    def _begin(self, *, resume: bool, progress: bool = True) -> Run:
        """Check the data, load the model, start the run, and resume it (or measure the base
        model's held-out loss)."""
        import torch
        from accelerate import Accelerator

        started = time.perf_counter()
        cfg = self.config
        data = self.check_data(progress=progress)  # bad records fail here, before the model
        acc = Accelerator(cpu=not torch.cuda.is_available())  # gloo DDP on CPU-only machines
        run_dir = Path(cfg.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:  # what a killed run left: restore adapter/, remove leftovers
            recover(run_dir)
            ckpt.clean_checkpoints(run_dir)
        acc.wait_for_everyone()
        if self.model is None:
            self.setup(device=acc.device)
        train_items, collate_fn = self._train_items(data.train, run_dir, progress=progress)
        held = data.held_out
        eval_examples = (
            list(self._prepare(held, run_dir, pack=False).examples)
            if held is not None and len(held)
            else []
        )
        run = self._start_run(acc, len(train_items), run_dir, data, eval_examples, started)
        latest = ckpt.checkpoint_dirs(run_dir)[-1:] if resume else []
        if latest:
            self._resume(run, latest[0])
        elif eval_examples:
            run.state.initial_eval_loss = self.evaluate(eval_examples, accelerator=acc)
        run.loader = StepLoader(
            run.order,
            train_items,
            micro_batch_size=cfg.micro_batch_size,
            grad_accum_steps=cfg.grad_accum_steps,
            collate_fn=collate_fn,
            world=acc.num_processes,
            rank=acc.process_index,
            pin=acc.device.type == "cuda",
        )
        run.timings["setup"] = time.perf_counter() - started
        return run

    def _resume(self, run: Run, checkpoint: Path) -> None:
        """Restore the adapter, optimizer, scheduler, RNG, data order and loop state."""
        state, order_state = ckpt.load_checkpoint(
            checkpoint,
            model=self.model,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            load_optimizer=run.load_optimizer_state,
        )
        run.state = LoopState.from_dict(state)
        run.order.set_state(order_state)
        run.resumed_from = run.state.step

    def _open_logs(self, run: Run, *, progress: bool) -> None:
        """The JSONL and TensorBoard loggers, the hooks and the progress bar (the main
        process logs and calls hooks)."""
        from tqdm.auto import tqdm

        cfg, main, step = self.config, run.main, run.state.step
        if main:
            log_file = run.run_dir / "log.jsonl"
            run.jsonl = JsonlLogger(log_file, log_every=cfg.log_every, resume_step=step)
            run.board = tensorboard_logger(run.run_dir / "tensorboard") if cfg.tensorboard else None
        loggers = [h for h in (run.jsonl, run.board) if h is not None]
        run.hooks = loggers + list(self.callbacks if main else ())
        run.last_saved = step
        run.bar = tqdm(
            total=cfg.max_steps,
            initial=step,
            desc="training",
            unit="step",
            disable=not (progress and main),
        )
        run.model.train()

    def _advance(self, run: Run) -> None:
        """One iteration of the loop: a step, then logging, evaluation and saving when due."""
        cfg, t = self.config, time.perf_counter()
        self._step(run)
        step = run.state.step
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            self._flush(run, since=t)  # the one device read
        else:
            run.timings["train"] += time.perf_counter() - t
        if run.eval_examples and cfg.eval_every and step % cfg.eval_every == 0:
            self._flush(run)
            run.stopped_early = self._periodic_eval(run)
        if cfg.save_every and step % cfg.save_every == 0:
            self._save(run)

    def _save(self, run: Run) -> None:
        """Write a checkpoint (every rank gathers its shards under FSDP; the main process
        writes)."""
        t, acc = time.perf_counter(), run.acc
        self._flush(run)
        if run.jsonl is not None:
            run.jsonl.flush()
        adapter, optim = None, None
        if run.sharded:
            from medlora.training import _sharding

            adapter = _sharding.adapter_state(self.model)
            optim = _sharding.optimizer_state(run.model, run.optimizer)
        path = None
        if run.main:
            path = ckpt.save_checkpoint(
                run.run_dir,
                model=self.model,
                optimizer=run.optimizer,
                scheduler=run.scheduler,
                order=run.loader.state(),
                state=run.state.to_dict(),
                keep=self.config.keep_checkpoints,
                adapter_state=adapter,
                optimizer_state=optim,
            )
        acc.wait_for_everyone()
        run.last_saved = run.state.step
        run.timings["save"] += time.perf_counter() - t
        if path is not None:
            dispatch(run.hooks, "on_save", run.state.step, path)

    def _start_run(
        self,
        acc: Any,
        n_items: int,
        run_dir: Path,
        data: RunData,
        eval_examples: list[TokenizedExample],
        started: float,
    ) -> Run:
        """Wrap the model for the launched processes (DDP, or FSDP2 sharding), and make the
        optimizer, scheduler and gradient scaler."""
        import torch
        from accelerate.utils import DistributedType
        from transformers import get_scheduler

        cfg = self.config
        precision = self.precision or resolve_precision(cfg.mixed_precision, acc.device.type)
        sharded = cfg.fsdp or acc.distributed_type == DistributedType.FSDP
        if sharded:
            from medlora.training import _sharding

            model = _sharding.shard(self.objective)
        else:
            model = acc.prepare_model(self.objective)  # DDP-wrapped under several processes
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = self._optimizer(params, acc.device)
        scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=cfg.max_steps,
        )
        self.runtime["fsdp"] = sharded
        self.runtime["world_size"] = acc.num_processes
        if acc.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # what is left in float32
            torch.backends.cudnn.allow_tf32 = True
        return Run(
            acc=acc,
            model=model,
            sharded=sharded,
            params=params,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=torch.amp.GradScaler(acc.device.type, enabled=precision.scaler),
            order=ExampleOrder(n_items, seed=cfg.seed),
            run_dir=run_dir,
            data=data,
            eval_examples=eval_examples,
            started=started,
        )

    def _step(self, run: Run) -> None:
        """One optimizer step: forward and backward every micro-batch, clip, update. Reads
        nothing back from the device: the loss and gradient norm wait in ``run.pending``."""
        import torch

        cfg, acc = self.config, run.acc
        batches = run.loader.next()
        # Each micro-batch's summed loss becomes its share of the step's mean: world size over
        # the step's supervised tokens on every process (DDP and FSDP average gradients).
        scale = acc.num_processes / max(batches.supervised, 1)
        loss_sum = torch.zeros((), dtype=torch.float32, device=acc.device)
        for i, cpu_batch in enumerate(batches.micro):
            batch = to_device(cpu_batch, acc.device)
            with self._grad_sync(run, i == len(batches.micro) - 1):
                loss = run.model(**batch)
                run.scaler.scale(loss * scale).backward()
            loss_sum += loss.detach()
        run.scaler.unscale_(run.optimizer)
        norm = None
        if cfg.max_grad_norm > 0:  # global norm: DDP grads are reduced, FSDP's are DTensors
            norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm)
            norm = norm.to_local() if hasattr(norm, "to_local") else norm
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        if acc.num_processes > 1:
            loss_sum = acc.reduce(loss_sum, reduction="sum")  # a collective, not a host read
        state = run.state
        state.step += 1
        state.tokens += batches.supervised
        state.input_tokens += batches.input_tokens
        run.pending.append(
            (state.step, loss_sum, norm, batches.supervised, run.scheduler.get_last_lr()[0])
        )
        run.bar.update()

    @contextlib.contextmanager
    def _grad_sync(self, run: Run, sync: bool) -> Iterator[None]:
        """No gradient reduction until the last micro-batch of a step."""
        if sync or run.acc.num_processes == 1:
            yield
        elif run.sharded:
            run.model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                run.model.set_requires_gradient_sync(True)
        else:
            with run.acc.no_sync(run.model):
                yield

    def _flush(self, run: Run, *, since: float | None = None) -> None:
        """Read the waiting steps' losses and gradient norms in one transfer, check them, and
        log the logged steps (``since``: when the current step started, to time it)."""
        import torch

        pending, run.pending = run.pending, []
        if not pending:
            return
        cfg, state = self.config, run.state
        losses = [loss.float().reshape(()) for _, loss, _, _, _ in pending]
        norms = [
            loss.new_full((), math.nan) if norm is None else norm.float().reshape(())
            for _, loss, norm, _, _ in pending
        ]
        values = torch.stack(losses + norms).tolist()  # the one device read
        if since is not None:  # the read waited for the queued steps: their time counts
            run.timings["train"] += time.perf_counter() - since
        logged = []
        for j, (step, _, _, count, lr) in enumerate(pending):
            mean = values[j] / max(count, 1)  # (sum over all processes) / tokens
            if not math.isfinite(mean):
                raise TrainingError(
                    f"loss became {mean} at step {step}; lower learning_rate or check the data"
                )
            state.losses.append(mean)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                logged.append((step, mean, lr, values[len(pending) + j]))
        for step, mean, lr, norm in logged:  # after the bookkeeping: a hook may interrupt
            self._log_step(run, step, {"loss": mean, "lr": lr, "grad_norm": norm})

    def _log_step(self, run: Run, step: int, measured: dict[str, float]) -> None:
        """Show a logged step on the progress bar and hand it to the hooks."""
        state = run.state
        logs = {
            "step": step,
            **measured,
            "tokens": state.tokens,
            "input_tokens": state.input_tokens,
            "tokens_per_s": state.input_tokens / max(run.timings["train"], 1e-9),
        }
        run.bar.set_postfix(loss=f"{measured['loss']:.3f}", tok_s=f"{logs['tokens_per_s']:.0f}")
        if run.main:
            dispatch(run.hooks, "on_step", step, logs)

    def _periodic_eval(self, run: Run) -> bool:
        """Evaluate, keep the best adapter, and say whether early stopping ends the run."""
        cfg, t, state, acc = self.config, time.perf_counter(), run.state, run.acc
        loss = self.evaluate(run.eval_examples, accelerator=acc)
        if run.main:
            metrics = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0))}
            dispatch(run.hooks, "on_eval", state.step, metrics)
        if loss < state.best_eval_loss - cfg.early_stopping_min_delta:
            state.best_eval_loss, state.best_step, state.bad_evals = loss, state.step, 0
            if cfg.select_best:
                self._save_adapter(run.run_dir / "best-adapter", acc)
            acc.wait_for_everyone()
        else:
            state.bad_evals += 1
        run.timings["eval"] += time.perf_counter() - t
        return bool(cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience)

    def _finish(self, run: Run) -> TrainingResult:
        """Pick the adapter (best or last), measure it, save it and write ``medlora.json``."""
        cfg, acc, state = self.config, run.acc, run.state
        best = state.best_step
        source = "best" if cfg.select_best and best is not None and best != state.step else "last"
        if source == "best":
            ckpt.load_adapter_weights(self.model, run.run_dir / "best-adapter")
        t = time.perf_counter()
        examples = run.eval_examples
        final = self.evaluate(examples, accelerator=acc) if examples else math.nan
        run.timings["eval"] += time.perf_counter() - t
        adapter_dir = self._save_adapter(run.run_dir / "adapter", acc)
        if run.main and cfg.plot and (run.run_dir / "log.jsonl").is_file():
            plot_losses(run.run_dir / "log.jsonl", run.run_dir / "loss.png")
        acc.wait_for_everyone()
        result = TrainingResult(
            run_dir=run.run_dir,
            adapter_dir=adapter_dir,
            base_model=resolve_model(cfg.model),
            steps=state.step,
            train_tokens=state.tokens,
            initial_eval_loss=state.initial_eval_loss,
            final_eval_loss=final,
            train_losses=tuple(state.losses),
            seconds=time.perf_counter() - run.started,
            quantized_modules=count_4bit_linear(self.model),
            best_step=best,
            best_eval_loss=state.best_eval_loss if best is not None else math.nan,
            stopped_early=run.stopped_early,
            resumed_from_step=run.resumed_from,
            checkpoints=tuple(ckpt.checkpoint_dirs(run.run_dir)),
            timings=run.timings,
        )
        if run.main:
            adapter_step = best if source == "best" and best is not None else state.step
            self._record(run, result, source, adapter_step).write(run.run_dir)
        return result

    def _record(self, run: Run, result: TrainingResult, source: str, step: int) -> RunRecord:
        """What the run directory's ``medlora.json`` says about this run."""
        data = run.data
        return RunRecord.of_result(
            result,
            config=self.config.to_dict(),
            data=data,
            data_card=RunDataCard.of(data, self._token_lengths),
            adapter_source=source,
            adapter_step=step,
            world_size=run.acc.num_processes,
            runtime=self.runtime,
        )

    def _save_adapter(self, target: Path, acc: Any = None) -> Path:
        """Write the adapter from the main process; under FSDP every rank gathers first."""
        from medlora.training._sharding import adapter_state, is_sharded

        state = adapter_state(self.model) if is_sharded(self.objective) else None
        if acc is None or acc.is_main_process:
            ckpt.save_adapter(
                self.model,
                resolve_model(self.config.model),
                target,
                self.tokenizer,
                state_dict=state,
            )
        return target
