"""TrainingArguments and Trainer construction, the masked-positions-only MLM loss, and callbacks."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_pt_utils import LengthGroupedSampler

from llmkit import hf_compat
from llmkit.console import log
from llmkit.devices import has_accelerator, keep_freed_memory
from llmkit.dropout import CheapDropout
from llmkit.errors import ConfigError, RunError
from llmkit.modeling import MaskedPositionsHead, fsdp_units

SIGNAL_CHECK_STEPS = 10  # launched runs agree on stopping (after Ctrl-C / SIGTERM) every this many steps


def training_arguments(cfg: Any, output_dir: Path, precision: str, **overrides: Any) -> TrainingArguments:
    """TrainingArguments for `cfg`; building them sets up the process group under accelerate launch/torchrun."""
    values = dict(cfg.training)
    values.update(overrides)
    if not has_accelerator():
        # CPU training, explicitly: bf16 autocast on the CPU needs it, and under torchrun / accelerate launch
        # it is what makes Accelerate join the processes with gloo instead of running N independent copies.
        values.setdefault("use_cpu", True)
    # Masked LMs and classifiers use every parameter each step: spare DDP its per-step search for unused ones.
    values.setdefault("ddp_find_unused_parameters", False)
    values.setdefault("dataloader_num_workers", loader_workers())
    if has_accelerator():  # pinned batches (the Trainer's default) copied to the GPU without waiting for each copy
        values.setdefault("accelerator_config", {"non_blocking": True})
    if precision == "fp32" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        values.setdefault("tf32", True)  # fp32 on Ampere/Hopper: TF32 matmuls, several times faster
    # llmkit's --precision decides; an Accelerate config's mixed_precision would otherwise silently turn an fp32
    # run into a mixed-precision one.
    launched = hf_compat.set_launch_precision(precision)
    if launched not in ("no", {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")):
        log(f"the Accelerate config asks for mixed_precision={launched}; llmkit uses precision {precision} "
            f"(change it with --precision)")
    try:
        args = TrainingArguments(
            output_dir=str(output_dir),
            seed=cfg.seed,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            disable_tqdm=True,  # LogCallback prints compact lines on stderr instead
            logging_nan_inf_filter=False,  # a NaN loss must be seen, not averaged away
            **values,
        )
    except (ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"Invalid training settings: {first}") from None
    if args.n_gpu > 1:
        # One process seeing several GPUs: the Trainer would wrap the model in nn.DataParallel, which is slower
        # than one process per GPU and breaks the masked-positions head (its replicas share one head). Use one.
        log(f"{args.n_gpu} GPUs are visible to this single process: training on {args.device}. To use them all, "
            f"add --num-processes {args.n_gpu} (or run under accelerate launch / torchrun)")
        hf_compat.use_one_gpu(args)
    if args.device.type == "cpu" and cfg.model.keep_freed_memory:
        keep_freed_memory()
    return args


def loader_workers() -> int:
    """Data loader worker processes: none on a CPU (they would compete with training for the cores), a few per
    GPU (collation then overlaps the accelerator's step)."""
    import os

    if not has_accelerator():
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(4, (os.cpu_count() or 2) // local - 1))


@contextlib.contextmanager
def data_stage(args: TrainingArguments, cache: Path | None = None):
    """The ranks of the data stage of a launched run (`distributed.DataRanks`), on a gloo group of its own with a
    long timeout.

    Ranks wait there for each other's share of tokenization (or for the main process to train a tokenizer);
    the training collectives keep `ddp_timeout`, and a machine lost mid-training is noticed far sooner
    (`distributed.watch_machines`). With a `cache` that some machine cannot see, each machine prepares its own copy. The
    group is destroyed when the data stage ends. A no-op in a single process.
    """
    from llmkit import distributed

    if args.world_size <= 1:
        yield distributed.DataRanks()
        return
    from datetime import timedelta

    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=distributed.DATA_TIMEOUT_S))
    stage = None
    try:
        stage = distributed.data_ranks(args, group, cache)
        yield stage
    finally:
        if stage is not None:
            stage.close()
        dist.destroy_process_group(group)


def effective_batch_size(args: TrainingArguments, trainer: Trainer | None = None) -> int:
    """Sequences per optimizer step: per-device batch x gradient accumulation x processes.

    Pass the trainer after training: `auto_find_batch_size` may have lowered the per-device batch.
    """
    per_device = (trainer.state.train_batch_size if trainer is not None else None) or args.train_batch_size
    return per_device * args.gradient_accumulation_steps * args.world_size


def subclass(given: type | None, base: type) -> type:
    """The trainer class a run builds: `base`, or a subclass of it the caller gives (llmkit's order, loss and
    callbacks live in `base`, so a class that is not one would silently train differently)."""
    if given is None:
        return base
    if not (isinstance(given, type) and issubclass(given, base)):
        raise ConfigError(f"trainer_class must be a subclass of llmkit.training.{base.__name__}, got {given!r}; "
                          f"subclass it and override what you need")
    return given


class SeededTrainer(hf_compat.TrainerHooks, Trainer):
    """`Trainer` whose length-grouped batches are drawn from (data seed, epoch) over whole optimizer steps.

    With `train_sampling_strategy="group_by_length"` the order is `LengthGroupedBatches`: seeded per epoch (the
    Trainer's `LengthGroupedSampler` shuffles with the global RNG, whose state after an epoch depends on how much
    dropout each process drew) and grouped per optimizer step (per-device batch x processes x accumulation).
    Processes iterate the sampler and each takes its share of every step, so their orders agree: shards stay
    disjoint in every epoch, a resumed run sees the order of an uninterrupted one, and N processes see the
    examples of each step that 1 process with the same effective batch sees.

    Training steps on a CPU draw dropout masks with `llmkit.dropout.CheapDropout` unless `cheap_dropout=False`.
    """

    def __init__(self, *args: Any, cheap_dropout: bool = True, group_window: int | None = None,
                 shuffle_batches: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cheap_dropout = cheap_dropout and self.args.device.type == "cpu" and not self.args.torch_compile
        self.group_window, self.shuffle_batches = group_window, shuffle_batches
        self.add_callback(ExactResume())
        hf_compat.fsdp_per_layer_units(self, fsdp_units)

    def training_step(self, model, inputs, num_items_in_batch=None):
        with CheapDropout() if self.cheap_dropout else contextlib.nullcontext():
            return super().training_step(model, inputs, num_items_in_batch)

    def get_batch_samples(self, epoch_iterator, num_batches, *args, **kwargs):
        # Resumed from the last checkpoint (a crash after it, before the final save): nothing is left to train, but
        # the Trainer would take one more step before it checks max_steps ("step 61/60"). No batches: it stops.
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)

    @contextlib.contextmanager
    def saving_checkpoint(self):
        """A failed checkpoint write (disk full, ...) is one line, and our own half-written checkpoint is removed;
        older checkpoints are rotated out only after this one is written."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from llmkit import outputs

        folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        existed = folder.exists()
        try:
            yield
        except (OSError, RuntimeError) as e:
            if not outputs.is_write_failure(e):
                raise
            if self.args.should_save and not existed:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)  # our own half-written checkpoint: give its space back
            raise RunError(outputs.write_failure("checkpoint", folder, e, folder.parent.parent)) from None

    def train_sampler(self, sampler, dataset):
        if isinstance(sampler, LengthGroupedSampler):
            per_device = hf_compat.train_batch_size(self)
            step = per_device * self.args.gradient_accumulation_steps * self.args.world_size
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = LengthGroupedBatches(sampler.lengths, step, seed, self.group_window, self.shuffle_batches)
        return sampler


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Indices in batches of similar length, reseeded with (seed, epoch) at each epoch.

    An epoch: a seeded permutation of the examples, cut into windows of `window` batches (None: the Trainer's
    `LengthGroupedSampler` rule, 50 batches or fewer so that there are at least 4 windows); each window sorted by
    length (longest first) and cut into batches of `batch` examples. With `shuffle_batches=False` the batches
    follow in that order, window after window, with the longest example moved to the very first batch: the
    Trainer's own `LengthGroupedSampler` order, index for index. With `shuffle_batches=True` the full batches of
    the epoch come in a seeded random order instead (the one holding the longest example first, the one short
    batch last), so that the model does not see long-to-short runs of batches. Both save the padding of sorting
    within a window; benchmarks/quality.py compares the fine-tuned accuracy of the two.
    """

    def __init__(self, lengths: list[int], batch: int, seed: int, window: int | None = None,
                 shuffle_batches: bool = False):
        if window is not None and window < 1:
            raise ConfigError(f"finetune.group_window must be >= 1 batch, got {window}")
        self.lengths, self.batch, self.seed = torch.as_tensor(lengths), batch, seed
        self.window = window if window is not None else max(1, min(50, len(lengths) // (batch * 4)))
        self.shuffle_batches = shuffle_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        span = self.window * self.batch
        batches = []
        for start in range(0, len(order), span):
            window = order[start:start + span]
            window = window[torch.argsort(self.lengths[window], descending=True, stable=True)]
            batches += list(window.split(self.batch))
        if not self.shuffle_batches:  # the Trainer's order: the longest example alone moves to the front
            first = torch.cat(batches)
            longest = int(torch.argmax(self.lengths[first]))
            first[0], first[longest] = first[longest].clone(), first[0].clone()
            return list(first.split(self.batch))
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch else []
        if batches:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i]].max()))
            batches[0], batches[longest] = batches[longest], batches[0]
        return batches + tail

    def __iter__(self):
        return iter(torch.cat(self.batches()).tolist() if len(self.lengths) else [])


# ---------------------------------------------------------------- masked-positions-only MLM loss


def mlm_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor], head: MaskedPositionsHead | None):
    """(logits at the masked index [M, V], their labels [M], their flat positions [M]).

    The index holds the labelled positions, maybe padded with unlabelled ones (label -100: no loss, no metric).

    The positions come from the collator (`masked_index`, computed on the CPU) when it provides them, so nothing
    here waits for the accelerator to say how many there are; otherwise they are found from the labels."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    index = inputs.pop("masked_index", None)
    if index is None:
        index = labels.flatten().ne(-100).nonzero().squeeze(-1)
    if head is not None and head.available:
        with head.at(index):
            logits = model(**inputs).logits
        if logits.dim() != 2:  # the head reshaped its output: not a per-token head after all
            raise RuntimeError("masked-positions head produced logits of unexpected shape")
    else:
        logits = model(**inputs).logits.flatten(0, 1).index_select(0, index)
    return logits, labels.flatten().index_select(0, index), index


class SummedCrossEntropy(torch.autograd.Function):
    """The summed cross-entropy of logits [M, V] (any float dtype) against labels [M] (-100: no loss), with
    `F.cross_entropy(logits.float(), labels, reduction="sum")`'s values and gradients, chunk by chunk of rows.

    `logits.float()`, the log-softmax, the loss's zero-filled gradient and the cast back are each a pass over the
    whole [M, V] matrix in memory: on a CPU, mini BERT's loss took ~37 ms a step that way. Here each chunk of rows
    is taken to fp32, reduced and dropped while it is in cache, and the backward pass recomputes the softmax per
    chunk (nothing of size [M, V] is kept but the logits) and writes the gradient in the logits' dtype. Loss and
    gradient equal the plain ones within fp32 rounding (softmax against exp of log-softmax); in bf16 all but
    ~0.005% of the gradient's entries are the same bits.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows = SummedCrossEntropy.chunk_rows(logits)
        labelled = labels.ne(-100)
        target = labels.clamp(min=0).unsqueeze(1)
        total = logits.new_zeros((), dtype=torch.float32)
        for start in range(0, logits.shape[0], rows):
            part = slice(start, start + rows)
            log_probs = torch.log_softmax(logits[part].float(), dim=-1)
            total -= (log_probs.gather(1, target[part]).squeeze(1) * labelled[part]).sum()
        ctx.save_for_backward(logits, labels)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, labels = ctx.saved_tensors
        rows = SummedCrossEntropy.chunk_rows(logits)
        scale = labels.ne(-100).unsqueeze(1) * grad  # g on labelled rows, 0 on padding
        target = labels.clamp(min=0).unsqueeze(1)
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], rows):
            part = slice(start, start + rows)
            probs = torch.softmax(logits[part].float(), dim=-1)
            probs.scatter_add_(1, target[part], torch.full(target[part].shape, -1.0, device=probs.device))
            grad_logits[part] = probs.mul_(scale[part])
        return grad_logits, None

    @staticmethod
    def chunk_rows(logits: torch.Tensor) -> int:
        # ~2 MB of fp32 per chunk on a CPU (a core's L2 cache); on an accelerator, few large chunks (few launches)
        budget = 1 << 19 if logits.device.type == "cpu" else 1 << 24
        return max(1, budget // max(1, logits.shape[-1]))


class MaskingEpochCallback(TrainerCallback):
    """Tells `masking.KeyedMasking` which epoch is running (so each epoch draws fresh masks)."""

    def __init__(self, masking: Any):
        self.masking = masking

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.masking.epoch = int(state.epoch or 0)


class MLMTrainer(SeededTrainer):
    """`Trainer` whose MLM loss is the token-level mean over the whole (accumulated, all-process) batch.

    The loss is normalised by `num_items_in_batch` (the masked tokens of every micro-batch of the optimizer
    step, over all processes), so gradient accumulation and data parallelism give the same gradients as one
    big batch; it is taken in chunks of rows (`SummedCrossEntropy`) unless `chunked_loss=False`. Evaluation
    reports token-level `eval_loss`, `perplexity` and `masked_accuracy` from per-example sums (no
    full-vocabulary logits are kept).
    """

    def __init__(self, *args: Any, sparse_head: bool = True, chunked_loss: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.masked_head = MaskedPositionsHead(self.model) if sparse_head else None
        self.chunked_loss = chunked_loss
        self.model_accepts_loss_kwargs = True  # ask the Trainer for num_items_in_batch
        hf_compat.keep_tied_head_in_root_fsdp_group(self)

    def train_sampler(self, sampler, dataset):
        """Blocks in a keyed order per (data seed, epoch): O(1) memory, the same on every rank (data.KeyedShuffle)."""
        from llmkit.data import KeyedShuffle

        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return KeyedShuffle(len(dataset), seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits, labels, _ = mlm_logits(model, inputs, self.masked_head)
        if self.chunked_loss:
            loss = SummedCrossEntropy.apply(logits, labels)
        else:
            loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        if num_items_in_batch is None:
            loss = loss / labels.ne(-100).sum().clamp(min=1)
        else:
            # No masked token in the whole step (tiny batches, low mlm.probability): the loss is 0, not 0/0 = NaN.
            loss = loss / (num_items_in_batch.clamp(min=1) if torch.is_tensor(num_items_in_batch)
                           else max(num_items_in_batch, 1))
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = hf_compat.prepare_inputs(self, inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            logits, labels, index = mlm_logits(model, inputs, self.masked_head)
            token_loss = F.cross_entropy(logits.float(), labels, reduction="none")  # 0 where labels are -100
            labelled = labels.ne(-100).float()  # the masked index may be padded with unlabelled positions
            correct = logits.argmax(-1).eq(labels).float()
        batch, width = inputs["input_ids"].shape
        rows = torch.div(index, width, rounding_mode="floor")
        stats = torch.zeros(batch, 3, dtype=torch.float32, device=token_loss.device)
        stats[:, 0].index_add_(0, rows, token_loss)
        stats[:, 1].index_add_(0, rows, correct)
        stats[:, 2].index_add_(0, rows, labelled)
        mean = token_loss.sum() / labelled.sum().clamp(min=1)
        return mean.detach(), stats, stats

    def evaluation_loop(self, *args, **kwargs):
        # The same masks at every evaluation (comparable numbers), and training randomness left untouched.
        cpu_state = torch.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        torch.manual_seed(self.args.seed + self.args.process_index)
        masking = self.data_collator if hasattr(self.data_collator, "epoch") else None
        epoch = masking.epoch if masking else None
        if masking:
            masking.epoch = -1  # evaluation masks never change
        try:
            output = super().evaluation_loop(*args, **kwargs)
        finally:
            if masking:
                masking.epoch = epoch
            torch.set_rng_state(cpu_state)
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)
        prefix = hf_compat.metric_key_prefix(args, kwargs)
        stats = output.predictions
        if stats is not None and len(stats):
            loss_sum, correct, count = (float(x) for x in stats.sum(axis=0))
            if count > 0:
                loss = loss_sum / count
                output.metrics[f"{prefix}_loss"] = loss
                output.metrics[f"{prefix}_perplexity"] = math.exp(min(loss, 700.0))
                output.metrics[f"{prefix}_masked_accuracy"] = correct / count
                output.metrics[f"{prefix}_masked_tokens"] = int(count)
        return output


# ---------------------------------------------------------------- callbacks


class LogCallback(TrainerCallback):
    """One compact line per log event on stderr: step, loss, learning rate, throughput, elapsed time and ETA."""

    def __init__(self, tokens_per_step: int | None = None):
        self.tokens_per_step = tokens_per_step
        self.start = None
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.start_step = time.perf_counter(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        # The Trainer adds the loss accumulated since the last log to train_loss without gathering it across
        # processes: logging the last step makes train_loss the all-process mean in every run.
        if state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        step = f"step {state.global_step}/{state.max_steps}"
        if "eval_loss" in logs:
            parts = [f"eval_{k[5:]} {_fmt(v)}" for k, v in logs.items() if k.startswith("eval_") and
                     not k.endswith(("_runtime", "_per_second", "_masked_tokens"))]
            log(f"{step}  " + "  ".join(parts))
        elif "loss" in logs:
            parts = [f"loss {_fmt(logs['loss'])}"]
            if "learning_rate" in logs:
                parts.append(f"lr {logs['learning_rate']:.2e}")
            log(f"{step}  " + "  ".join(parts + self.pace(state)))

    def pace(self, state) -> list[str]:
        """Throughput, elapsed time and the time left at the pace so far (evaluations included)."""
        from llmkit.console import clock

        elapsed, done = time.perf_counter() - (self.start or time.perf_counter()), state.global_step - self.start_step
        if elapsed <= 0 or done <= 0:
            return []
        out = [f"{done * self.tokens_per_step / elapsed / 1000:.1f}k tok/s"] if self.tokens_per_step else []
        left = max(0, state.max_steps - state.global_step) * elapsed / done
        return out + [f"elapsed {clock(elapsed)}", f"ETA {clock(left)}"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


class StopCallback(TrainerCallback):
    """Stops cleanly on SIGINT/SIGTERM (saving a resumable checkpoint) and on a non-finite loss (saving nothing)."""

    def __init__(self):
        self.interrupted: str | None = None
        self.nonfinite_step: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.interrupted:  # a second signal: stop now
            raise KeyboardInterrupt
        self.interrupted = signal.Signals(signum).name
        log(f"{self.interrupted} received: saving a checkpoint after this step, then stopping "
            f"(send it again to stop at once)")

    def on_step_end(self, args, state, control, **kwargs):
        # Every process stops at the same step, or the others would wait forever. Agreeing costs a collective and
        # a host sync, so processes compare notes every SIGNAL_CHECK_STEPS steps (all at the same steps).
        if args.world_size > 1:
            if state.global_step % SIGNAL_CHECK_STEPS:
                return
            stop = torch.tensor([1.0 if self.interrupted else 0.0], device=args.device)
            torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
            if stop.item() and not self.interrupted:
                self.interrupted = "a signal on another process"
        if self.interrupted:
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.nonfinite_step = state.global_step
            control.should_save = False
            control.should_evaluate = False
            control.should_training_stop = True


class ExactResume(TrainerCallback, ExportableState):
    """What makes a resumed run end as an uninterrupted one would (every `SeededTrainer` has one).

    - The last step does what the epoch's end would do after it (log, evaluate, save) before the last checkpoint
      is written, and the epoch's end then repeats nothing: a run resumed from that checkpoint has nothing left.
    - A step that saves a checkpoint also logs its loss, so the log history holds the loss of every step
      (`whole_run`), however often a run was resumed.
    - The training time of every segment, up to its last checkpoint, is kept in the checkpoint's trainer state.
    """

    def __init__(self, elapsed: float = 0.0):
        self.before, self.start = float(elapsed), None

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"elapsed": self.seconds()}}

    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self.start if self.start is not None else 0.0)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        self.before = float(saved.get("attributes", {}).get("elapsed", 0.0)) if isinstance(saved, dict) else 0.0
        self.start = time.perf_counter()
        state.stateful_callbacks[type(self).__name__] = self.state()  # a checkpoint of an older run lacks it

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
            if args.eval_strategy == "epoch" and args.eval_delay <= state.epoch:
                control.should_evaluate = True
            if args.save_strategy == "epoch":
                control.should_save = True
        if control.should_save:
            control.should_log = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:  # the last step did it all
            control.should_log = control.should_evaluate = control.should_save = False
        elif control.should_save:
            control.should_log = True


def whole_run(trainer: Trainer, result: Any) -> dict[str, float]:
    """Training loss, time and throughput of the whole run (the Trainer reports those of a resumed run's last
    segment): `result.metrics`' keys, over every segment.

    The loss is the mean over every step, from the log history (each log holds the mean since the previous)."""
    clock = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ExactResume))
    total, last = 0.0, 0
    for entry in trainer.state.log_history:
        if "loss" in entry and "step" in entry and entry["step"] > last:
            total, last = total + entry["loss"] * (entry["step"] - last), entry["step"]
    runtime = clock.before + result.metrics["train_runtime"]
    args, steps = trainer.args, trainer.state.global_step
    # the examples of the steps taken, counted as the Trainer counts them for one segment
    samples = steps * effective_batch_size(args, trainer) if args.max_steps > 0 else \
        len(trainer.train_dataset) * args.num_train_epochs * steps / max(trainer.state.max_steps, 1)
    return {"train_runtime": runtime, "train_samples_per_second": samples / runtime if runtime > 0 else None,
            "train_loss": total / last if last else result.metrics.get("train_loss")}


def train(trainer: Trainer, guard: StopCallback, run_dir: Any, config_yaml: str) -> Any:
    """Record the starting config (a fresh run), train under the guard, and turn a stop into a clear error.

    The result's loss, time and throughput are those of the whole run (`whole_run`), resumed or not."""
    from llmkit import outputs
    from llmkit.errors import RunError

    if trainer.is_world_process_zero() and not run_dir.resume_from:
        outputs.record_start(run_dir, config_yaml)
    from llmkit.distributed import watch_machines

    guard.install()
    try:
        with watch_machines(trainer.args):  # a machine lost mid-run: named, and this process stops in bounded time
            result = trainer.train(resume_from_checkpoint=run_dir.resume_from)
    finally:
        guard.uninstall()
    if guard.nonfinite_step is not None:
        last = outputs.last_checkpoint(run_dir.path)
        raise RunError(f"The training loss became NaN/inf at step {guard.nonfinite_step}; stopped. Last good "
                       f"checkpoint: {last or 'none'}. Lower training.learning_rate or use --set precision=fp32.")
    if guard.interrupted:
        raise RunError(f"Interrupted ({guard.interrupted}) at step {trainer.state.global_step}; checkpoint saved in "
                       f"{outputs.last_checkpoint(run_dir.path)}. Resume with the same command plus --resume.")
    result.metrics.update(whole_run(trainer, result))
    return result
