"""`llmkit pretrain`: masked-language-model pretraining, from scratch or continued from a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmkit import config as config_lib
from llmkit import data, outputs
from llmkit.config import RunConfig
from llmkit.console import log
from llmkit.errors import ConfigError, DataError

USAGE = """\
from transformers import pipeline

fill = pipeline("fill-mask", model="{path}")
print(fill("The function returns a {mask} of the values."))
"""

# Settings that may differ when a run is resumed: they change neither the data nor the optimisation.
RESUMABLE_CHANGES = {"training.logging_steps", "training.eval_steps", "training.save_steps",
                     "training.save_total_limit", "training.dataloader_num_workers", "data.num_proc",
                     "data.cache_dir", "training.per_device_eval_batch_size", "data.max_eval_samples"}


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Pretrain per `cfg`; returns the final metrics. Writes the run directory described in DESIGN.md."""
    # 1. validate everything cheap before loading anything
    run_dir, finished = outputs.prepare(cfg, resume, overwrite, RESUMABLE_CHANGES, log)
    if finished is not None:
        return finished

    # 2. data: training texts and a held-out split
    texts, source = (data.builtin_corpus(data.cache_root(cfg.data)), "the built-in sample corpus (Python standard "
                     "library docstrings)") if not cfg.data.train else data.load_texts(cfg.data.train, cfg.data)
    if cfg.data.eval:
        eval_texts, _ = data.load_texts(cfg.data.eval, cfg.data)
    elif cfg.data.eval_split:
        eval_texts, _ = data.load_texts(cfg.data.train, cfg.data, split=cfg.data.eval_split)
    else:
        texts, eval_texts = data.split_eval(texts, cfg.data.eval_fraction, cfg.seed)
    log(f"data: {len(texts):,} training and {len(eval_texts):,} evaluation texts from {source}")

    # 3. placement and precision (sets up the process group under accelerate/torchrun)
    from llmkit import modeling, training

    precision, why = modeling.resolve_precision(cfg.precision)
    args = training.training_arguments(
        cfg, run_dir.checkpoints, precision, remove_unused_columns=False,  # keep "index" for SeededMasking
        # a masked LM uses every parameter each step: spare DDP its per-step search for unused ones
        ddp_find_unused_parameters=cfg.training.get("ddp_find_unused_parameters", False))
    attention = modeling.resolve_attention(cfg.model.attn_implementation, args.device.type)
    log(f"precision: {precision} ({why}); attention: {attention}")

    # 4. tokenizer and model
    import transformers

    transformers.set_seed(cfg.seed)
    with args.main_process_first(desc="tokenizer"):
        tokenizer = tokenizer_for(cfg, texts)
    if cfg.model.name:
        model, note = modeling.load_mlm(cfg.model.name, cfg.model.trust_remote_code, attention,
                                       cfg.model.dropout)
        if note:
            log(note)
        modeling.check_vocab(model, tokenizer, cfg.model.name, cfg.model.tokenizer or cfg.model.name)
    else:
        model = modeling.build_mlm(cfg.model.size, tokenizer, cfg.data.max_seq_length, attention,
                                   cfg.model.dropout, cfg.model.config_overrides)
    shape = modeling.describe(model)
    log(f"model: {shape['architecture']} {shape['layers']}x{shape['hidden_size']}, {shape['parameters'] / 1e6:.1f}M "
        f"parameters, vocabulary {len(tokenizer):,}")

    # 5. features: tokenized, packed, cached (built once on the main process, loaded by the others)
    with args.main_process_first(desc="tokenization"):
        train_blocks = data.cached_blocks(tokenizer, texts, cfg.data, cfg.mlm.whole_word_mask, log)
        eval_blocks = data.cached_blocks(tokenizer, eval_texts, cfg.data, cfg.mlm.whole_word_mask, log)
    if cfg.data.max_eval_samples:
        eval_blocks = eval_blocks.select(cfg.data.max_eval_samples)
    if len(train_blocks) == 0:
        raise DataError("The training texts produced no tokens. Give data with text in it.")
    log(f"features: {len(train_blocks):,} training blocks ({train_blocks.num_tokens:,} tokens), "
        f"{len(eval_blocks):,} evaluation blocks of up to {cfg.data.max_seq_length} tokens")

    # 6. trainer
    collator = training.SeededMasking(transformers.DataCollatorForLanguageModeling(
        tokenizer=tokenizer, mlm_probability=cfg.mlm.probability, mask_replace_prob=cfg.mlm.mask_replace_prob,
        random_replace_prob=cfg.mlm.random_replace_prob, whole_word_mask=cfg.mlm.whole_word_mask), cfg.seed)
    effective_batch = training.effective_batch_size(args)
    guard = training.GuardCallback()
    trainer = training.MLMTrainer(
        model=model, args=args, data_collator=collator, train_dataset=train_blocks, eval_dataset=eval_blocks,
        processing_class=tokenizer, sparse_head=cfg.mlm.sparse_head,
        callbacks=[training.LogCallback(effective_batch * cfg.data.max_seq_length), guard,
                   training.MaskingEpochCallback(collator)])
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    if cfg.mlm.sparse_head and not trainer.sparse.available:
        log(f"{type(model).__name__} has no known per-token MLM head; computing the full head (same results, slower)")
    log(f"batch: {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} accumulation x "
        f"{args.world_size} process(es) = {effective_batch} sequences per step")

    # 7. train (Ctrl-C / SIGTERM save a checkpoint; a non-finite loss stops without saving)
    result = training.train(trainer, guard, run_dir, config_lib.dump(cfg))

    # 8. evaluate (unless the last step just did) and save the run directory
    if training.effective_batch_size(args, trainer) != effective_batch:
        effective_batch = training.effective_batch_size(args, trainer)
        log(f"batch: auto_find_batch_size lowered it to {trainer.state.train_batch_size} per device = "
            f"{effective_batch} sequences per step")
    last = trainer.state.log_history[-2:] if trainer.state.log_history else []
    done = [e for e in last if "eval_loss" in e and e.get("step") == trainer.state.global_step]
    metrics = done[-1] if done else trainer.evaluate()
    summary = final_metrics(metrics, result.metrics, trainer, effective_batch, cfg, precision, train_blocks)
    save(run_dir, trainer, tokenizer, cfg, summary, source, shape)
    return summary


def tokenizer_for(cfg: RunConfig, texts: list[str]) -> Any:
    from llmkit import modeling

    if cfg.model.tokenizer or cfg.model.name:
        name = cfg.model.tokenizer or cfg.model.name
        tokenizer = modeling.load_tokenizer(name, cfg.model.trust_remote_code)
        if tokenizer.mask_token is None:
            raise ConfigError(f"Tokenizer '{name}' has no mask token, which masked-LM pretraining needs. Use a "
                              f"BERT-style tokenizer.")
        return tokenizer
    return cached_trained_tokenizer(cfg, texts)


def cached_trained_tokenizer(cfg: RunConfig, texts: list[str]) -> Any:
    """Train a WordPiece tokenizer on the corpus, cached by (texts, vocab size, lowercase)."""
    import hashlib

    from llmkit import modeling

    key = hashlib.sha256(f"{data.texts_fingerprint(texts)}-{cfg.model.vocab_size}-{cfg.model.lowercase}".encode())
    folder = data.cache_root(cfg.data) / "tokenizers" / key.hexdigest()[:24]
    if (folder / "tokenizer.json").is_file():
        return modeling.load_tokenizer(str(folder))
    log(f"training a WordPiece tokenizer ({cfg.model.vocab_size:,} tokens) on the corpus")
    tokenizer = modeling.train_tokenizer(texts, cfg.model.vocab_size, cfg.model.lowercase)
    try:
        tokenizer.save_pretrained(str(folder))
    except OSError:
        pass
    return tokenizer


def final_metrics(metrics: dict[str, Any], train: dict[str, Any], trainer: Any, effective_batch: int,
                  cfg: RunConfig, precision: str, blocks: data.Blocks) -> dict[str, Any]:
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
    outputs.finish(run_dir, staging, trainer, cfg, metrics, "Masked-LM pretraining", card=dict(
        title=f"{Path(cfg.output_dir).name}: masked-LM pretraining",
        summary=(f"A {shape['architecture']} pretrained with masked language modelling by `llmkit pretrain` "
                 f"({'continued from `' + cfg.model.name + '`' if cfg.model.name else 'from scratch, size ' + cfg.model.size}). "
                 f"Evaluation perplexity {metrics['perplexity']:.2f}, masked-token accuracy "
                 f"{(metrics['masked_accuracy'] or 0):.3f}."),
        data=(f"{source}; {metrics['corpus_tokens']:,} training tokens in blocks of {cfg.data.max_seq_length}; "
              f"{metrics['steps']:,} steps of {metrics['effective_batch_size']} sequences "
              f"({metrics['train_tokens']:,} tokens seen)."),
        model={**shape, "precision": metrics["precision"], "processes": metrics["processes"],
               "effective batch size": metrics["effective_batch_size"]},
        usage=USAGE.format(path=Path(cfg.output_dir).resolve(), mask=mask)))
    log(f"saved to {run_dir.path}: eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['perplexity']:.2f}, "
        f"masked_accuracy {(metrics['masked_accuracy'] or 0):.4f}")
