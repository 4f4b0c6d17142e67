"""`llmkit pretrain`: masked-language-model pretraining, from scratch or continued from a checkpoint."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmkit import config as config_lib
from llmkit import data, modeling, outputs
from llmkit.config import RunConfig
from llmkit.console import log
from llmkit.errors import ConfigError

USAGE = """\
from transformers import pipeline

fill = pipeline("fill-mask", model="{path}")
print(fill("The function returns a {mask} of the values."))
"""

# Settings that may differ when a run is resumed: they change neither the data nor the optimisation.
RESUMABLE_CHANGES = {"training.logging_steps", "training.eval_steps", "training.save_steps",
                     "training.save_total_limit", "training.dataloader_num_workers", "data.num_proc",
                     "data.cache_dir", "training.per_device_eval_batch_size", "data.max_eval_samples",
                     "data.streaming", "model.keep_freed_memory"}


@outputs.holds_output_dir  # one run at a time in an output directory
def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, *, callbacks: Sequence[Any] = (),
        trainer_class: type | None = None) -> dict[str, Any]:
    """Pretrain per `cfg`; returns the final metrics. Writes the run directory described in DESIGN.md.
    `callbacks` (`TrainerCallback`s) join the run's own and `trainer_class` (a subclass of `training.MLMTrainer`)
    builds its trainer: a run is extended without patching llmkit."""
    # 1. validate everything cheap before loading anything: the run directory, the settings, the corpus
    if trainer_class is not None:
        from llmkit import training

        training.subclass(trainer_class, training.MLMTrainer)
    run_dir, finished = outputs.check_run_dir(cfg, resume, overwrite, RESUMABLE_CHANGES, log)
    if finished is not None:
        return finished
    corpus = data.plan_corpus(cfg.data)
    modeling.check_model(cfg)

    # 2. placement and precision (sets up the process group under accelerate/torchrun)
    from llmkit import devices, training

    precision, why = devices.precision(cfg.precision)
    args = training.training_arguments(cfg, run_dir.checkpoints, precision,
                                       remove_unused_columns=False)  # keep "index": it keys the masks
    attention, reason = modeling.resolve_attention(cfg.model.attn_implementation, args.device.type,
                                                   modeling.model_type(cfg))
    log(f"precision: {precision} ({why}); attention: {attention} ({reason})")

    # 3. tokenizer and data: tokenized once into memory-mapped shards, every rank taking a share
    import transformers

    transformers.set_seed(cfg.seed)
    tokenizer, train_blocks, eval_blocks = tokenized(cfg, corpus, args)

    # 4. model: the checkpoint's (continued pretraining) or a new one of the preset size
    model = mlm_model(cfg, tokenizer, attention)
    shape = modeling.describe(model)

    # 5. trainer: keyed masks, keyed block order, the MLM head and loss only at masked positions
    trainer, guard, _ = make_trainer(cfg, args, model, tokenizer, train_blocks, eval_blocks, callbacks, trainer_class)

    # 6. train (Ctrl-C / SIGTERM save a checkpoint; a non-finite loss stops without saving)
    result = training.train(trainer, guard, run_dir, config_lib.dump(cfg))

    # 7. evaluate (unless the last step just did) and save the run directory
    summary = final_metrics(evaluated(trainer), result.metrics, trainer, training.effective_batch_size(args, trainer),
                            cfg, precision, train_blocks)
    save(run_dir, trainer, tokenizer, cfg, summary, corpus.description, shape)
    return summary


def tokenized(cfg: RunConfig, corpus: Any, args: Any) -> tuple[Any, Any, Any]:
    """(tokenizer, training blocks, evaluation blocks) of the corpus, tokenized once into memory-mapped shards by
    every rank taking a share (per machine if the cache is not shared)."""
    from llmkit import training

    with training.data_stage(args, data.cache_root(cfg.data)) as stage:
        tokenizer = tokenizer_for(cfg, corpus, **stage.ranks)
        prepared = data.prepare_corpus(corpus, tokenizer, cfg.data, local_world=local_processes(), log=log,
                                       **stage.ranks)
        stage.agree(prepared.manifest)
    train_blocks, eval_blocks = data.open_blocks(prepared, cfg.data, tokenizer)
    log(f"data: {corpus.description}: {data.describe(prepared.manifest)}")
    log(f"features: {len(train_blocks):,} training blocks ({train_blocks.num_tokens:,} tokens), "
        f"{len(eval_blocks):,} evaluation blocks of up to {cfg.data.max_seq_length} tokens")
    return tokenizer, train_blocks, eval_blocks


def mlm_model(cfg: RunConfig, tokenizer: Any, attention: str) -> Any:
    if cfg.model.name:
        model, notes = modeling.load_mlm(cfg.model.name, cfg.model.trust_remote_code, attention, cfg.model.dropout)
        for note in notes:
            log(note)
        modeling.check_vocab(model, tokenizer, cfg.model.name, cfg.model.tokenizer or cfg.model.name)
    else:
        model = modeling.build_mlm(cfg.model.arch, cfg.model.size, tokenizer, cfg.data.max_seq_length, attention,
                                   cfg.model.dropout, cfg.model.config_overrides)
    shape = modeling.describe(model)
    log(f"model: {shape['architecture']} {shape['layers']}x{shape['hidden_size']}, {shape['parameters'] / 1e6:.1f}M "
        f"parameters, vocabulary {len(tokenizer):,}")
    return model


def evaluated(trainer: Any) -> dict[str, Any]:
    """The evaluation of the final model: the one the last step logged, or a new one."""
    last = trainer.state.log_history[-2:] if trainer.state.log_history else []
    done = [e for e in last if "eval_loss" in e and e.get("step") == trainer.state.global_step]
    return done[-1] if done else trainer.evaluate()


def local_processes() -> int:
    """Processes of this run on this machine (torchrun and accelerate launch set LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def make_trainer(cfg: RunConfig, args: Any, model: Any, tokenizer: Any, train_blocks: Any, eval_blocks: Any,
                 callbacks: Sequence[Any] = (), trainer_class: type | None = None):
    """(MLMTrainer, its guard callback, sequences per optimizer step)."""
    import transformers

    from llmkit import masking, training

    replace, random_ = cfg.mlm.mask_replace_prob, cfg.mlm.random_replace_prob
    if cfg.mlm.whole_word_mask and (replace, random_) != (1.0, 0.0):
        log("whole-word masking replaces every selected word with the mask token (as DataCollatorForLanguageModeling "
            "does): mlm.mask_replace_prob=1, mlm.random_replace_prob=0")
        replace, random_ = 1.0, 0.0
    collator = masking.KeyedMasking(tokenizer=tokenizer, mlm_probability=cfg.mlm.probability,
                                    mask_replace_prob=replace, random_replace_prob=random_,
                                    whole_word_mask=cfg.mlm.whole_word_mask, key=cfg.seed)
    effective_batch = training.effective_batch_size(args)
    guard = training.StopCallback()
    trainer = training.subclass(trainer_class, training.MLMTrainer)(
        model=model, args=args, data_collator=collator, train_dataset=train_blocks, eval_dataset=eval_blocks,
        processing_class=tokenizer, sparse_head=cfg.mlm.sparse_head, chunked_loss=cfg.mlm.chunked_loss,
        cheap_dropout=cfg.model.cheap_dropout,
        callbacks=[training.LogCallback(effective_batch * cfg.data.max_seq_length), guard,
                   training.MaskingEpochCallback(collator), *callbacks])
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    if cfg.mlm.sparse_head and not trainer.masked_head.available:
        log(f"{type(model).__name__} has no known per-token MLM head; computing the full head (same results, slower)")
    log(f"batch: {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} accumulation x "
        f"{args.world_size} process(es) = {effective_batch} sequences per step")
    return trainer, guard, effective_batch


def tokenizer_for(cfg: RunConfig, corpus: data.Corpus, rank: int = 0, world: int = 1,
                  barrier: Any = lambda: None, files_only: bool = False) -> Any:
    """The model's or the given tokenizer, the prepared folder's, or one trained on a sample of the corpus
    (by the main process, cached; the other ranks load it). `files_only`: a local tokenizer folder is read with
    the `tokenizers` library alone (enough to prepare data, and 2 s faster to start)."""
    from llmkit.data.tokenize import TokenizerFiles

    name = cfg.model.tokenizer or cfg.model.name or (str(corpus.folder / "tokenizer") if corpus.folder else None)
    if name and files_only and TokenizerFiles.readable(name):
        tokenizer = TokenizerFiles(name)
        if tokenizer.mask_token is None:
            raise ConfigError(f"Tokenizer '{name}' has no mask token, which masked-LM pretraining needs. Use a "
                              f"BERT-style tokenizer.")
        return tokenizer
    from llmkit import modeling

    if name:
        tokenizer = modeling.load_tokenizer(name, cfg.model.trust_remote_code)
        if tokenizer.mask_token is None:
            raise ConfigError(f"Tokenizer '{name}' has no mask token, which masked-LM pretraining needs. Use a "
                              f"BERT-style tokenizer.")
        return tokenizer
    if rank != 0:
        barrier()  # the main process trains it first
    tokenizer = cached_trained_tokenizer(cfg, corpus)
    if rank == 0:
        barrier()
    return tokenizer


def cached_trained_tokenizer(cfg: RunConfig, corpus: data.Corpus) -> Any:
    """Train a WordPiece tokenizer on a bounded sample of the corpus, cached by (corpus, sample, vocabulary)."""
    import hashlib

    from llmkit import modeling

    settings = f"{corpus.train.fingerprint}-{cfg.data.tokenizer_sample_bytes}-{cfg.model.vocab_size}-{cfg.model.lowercase}"
    folder = data.cache_root(cfg.data) / "tokenizers" / hashlib.sha256(settings.encode()).hexdigest()[:24]
    if (folder / "tokenizer.json").is_file():
        return modeling.load_tokenizer(str(folder))
    sample = min(corpus.train.total_bytes, cfg.data.tokenizer_sample_bytes)
    log(f"training a WordPiece tokenizer ({cfg.model.vocab_size:,} tokens) on {sample / 1e6:,.1f} MB of the corpus")
    texts = data.tokenizer_sample(corpus, cfg.data.tokenizer_sample_bytes, cfg.data.split_seed)
    tokenizer = modeling.train_tokenizer(texts, cfg.model.vocab_size, cfg.model.lowercase)
    try:
        tokenizer.save_pretrained(str(folder))
    except OSError:
        pass
    return tokenizer


def final_metrics(metrics: dict[str, Any], train: dict[str, Any], trainer: Any, effective_batch: int,
                  cfg: RunConfig, precision: str, blocks: data.TokenBlocks) -> dict[str, Any]:
    if trainer.state.train_batch_size and trainer.state.train_batch_size != trainer.args.per_device_train_batch_size:
        log(f"batch: auto_find_batch_size lowered it to {trainer.state.train_batch_size} per device = "
            f"{effective_batch} sequences per step")
    steps = trainer.state.global_step
    runtime = train.get("train_runtime") or float("nan")
    tokens_seen = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0) or \
        steps * effective_batch * cfg.data.max_seq_length
    eval_loss = metrics.get("eval_loss", float("nan"))
    return {
        "eval_loss": eval_loss,
        "perplexity": math.exp(min(eval_loss, 700.0)) if math.isfinite(eval_loss) else float("nan"),
        "masked_accuracy": metrics.get("eval_masked_accuracy"),
        "eval_masked_tokens": metrics.get("eval_masked_tokens"),
        "train_loss": train.get("train_loss"),
        "steps": steps,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "train_tokens": tokens_seen,
        "train_runtime_s": runtime,
        "tokens_per_second": tokens_seen / runtime if runtime and math.isfinite(runtime) else None,
        "effective_batch_size": effective_batch,
        "processes": trainer.args.world_size,
        "precision": precision,
        "corpus_tokens": blocks.num_tokens,
    }


def save(run_dir: outputs.RunDir, trainer: Any, tokenizer: Any, cfg: RunConfig, metrics: dict[str, Any],
         source: str, shape: dict[str, Any]) -> None:
    """Write the final run directory atomically (staged, then moved into place, config last)."""
    staging = outputs.stage_model(run_dir, trainer, tokenizer)
    if staging is None:  # not the main process
        return
    mask = tokenizer.mask_token or "[MASK]"
    outputs.write_final(run_dir, staging, trainer, cfg, metrics, "Masked-LM pretraining", card=dict(
        title=f"{Path(cfg.output_dir).name}: masked-LM pretraining",
        summary=(f"A {shape['architecture']} pretrained with masked language modelling by `llmkit pretrain` "
                 f"({'continued from `' + cfg.model.name + '`' if cfg.model.name else f'from scratch, {cfg.model.arch} {cfg.model.size}'}). "
                 f"Evaluation perplexity {metrics['perplexity']:.2f}, masked-token accuracy "
                 f"{(metrics['masked_accuracy'] or 0):.3f}."),
        data=(f"{source}; {metrics['corpus_tokens']:,} training tokens in blocks of {cfg.data.max_seq_length}; "
              f"{metrics['steps']:,} steps of {metrics['effective_batch_size']} sequences "
              f"({metrics['train_tokens']:,} tokens seen)."),
        model={**shape, "precision": metrics["precision"], "processes": metrics["processes"],
               "effective batch size": metrics["effective_batch_size"]},
        usage=USAGE.format(path=Path(cfg.output_dir).resolve(), mask=mask),
        base_model=cfg.model.name, pipeline_tag="fill-mask", datasets=cfg.data.train))
    log(f"saved to {run_dir.path}: eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['perplexity']:.2f}, "
        f"masked_accuracy {(metrics['masked_accuracy'] or 0):.4f}")
