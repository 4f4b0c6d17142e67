"""The `llmkit` command line. Parses, builds the config, calls a recipe's `run`. Heavy imports stay inside commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmkit.errors import LlmkitError

app = typer.Typer(
    name="llmkit",
    help="Masked-LM pretraining, classification fine-tuning and fill-mask on Hugging Face Transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
recipes_app = typer.Typer(help="List, show and copy the shipped recipes.", no_args_is_help=True,
                          rich_markup_mode=None)
app.add_typer(recipes_app, name="recipes")

# Options shared by the training commands.
Recipe = Annotated[Optional[str], typer.Argument(help="Recipe: a YAML path or a shipped recipe name (`llmkit recipes ls`).",
                                                 show_default=False)]
OutputDir = Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Run directory to write.", show_default=False)]
MaxSteps = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimizer steps.", show_default=False)]
Epochs = Annotated[Optional[float], typer.Option("--epochs", help="Number of passes over the training data.",
                                                show_default=False)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue OUTPUT_DIR from its last checkpoint.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing llmkit run in OUTPUT_DIR.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override any setting: section.key=value "
                                                   "(training.X reaches TrainingArguments). Repeatable.",
                                                   show_default=False)]
Precision = Annotated[Optional[str], typer.Option("--precision", help="auto | bf16 | fp16 | fp32 (default: auto).",
                                                  show_default=False)]
# Options shared by the prediction commands.
Device = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: GPU if present).",
                                               show_default=False)]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Texts per forward pass.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON Lines, one object per input.")]
Runtime = Annotated[str, typer.Option("--runtime", help="auto | torch | onnx | onnx-int8. auto: ONNX Runtime on a CPU "
                                      "when the run has a fresh `llmkit export`, else transformers (torch).")]


def fail(error: BaseException) -> None:
    """Print an error as one line on stderr and exit with its code (tracebacks only with LLMKIT_DEBUG=1)."""
    if os.environ.get("LLMKIT_DEBUG"):
        raise error
    if isinstance(error, LlmkitError):
        message, code = str(error), error.exit_code
    elif isinstance(error, KeyboardInterrupt):
        message, code = "interrupted.", 130
    elif isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        message, code = ("out of memory. Lower training.per_device_train_batch_size (raise "
                         "training.gradient_accumulation_steps to keep the effective batch) or --max-seq-length."), 1
    else:
        first = (str(error).strip().splitlines() or [""])[0][:300]
        message, code = f"{type(error).__name__}: {first} (run with LLMKIT_DEBUG=1 for the traceback)", 1
    print(f"llmkit: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def guarded(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except (LlmkitError, Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the CLI edge maps everything
        fail(e)


def _quiet_libraries() -> None:
    """Quiet the libraries' own progress bars and logs: llmkit reports progress itself on stderr."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


LAUNCH_OPTIONS = ("--num-processes", "--num-machines", "--machine-rank", "--main-process-ip", "--main-process-port")


def _launch(num_processes: int | None, machines: Any = None) -> None:
    """`--num-processes N` (and the machine options): re-run this same command under `accelerate launch`.

    What is launched (data parallel, or the kind an Accelerate config names) is `environment.launch_command`,
    also printed by `llmkit env`. N counts the processes of all machines, as accelerate's --num_processes does
    (default: one per visible GPU, or one, on each machine). Exits with the launch's status: 0 when every
    process succeeded.
    """
    if "LOCAL_RANK" in os.environ:  # launched already
        return
    from llmkit.environment import Machines, check_machines

    machines = machines or Machines()
    check_machines(machines)
    if machines.count == 1 and (num_processes is None or num_processes == 1):
        return
    import subprocess

    from llmkit.environment import check_processes, launch_command, shown, visible_gpus

    gpus = visible_gpus()
    if num_processes is None:
        num_processes = machines.count * max(1, gpus)
    check_processes(num_processes, gpus, machines.count)

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in LAUNCH_OPTIONS)):
            args.append(arg)
    command, what = launch_command(num_processes, args, machines)
    from llmkit.console import log

    log(f"launching {num_processes} processes ({what}): {shown(command)}")
    process = subprocess.Popen(command)
    while True:
        try:
            code = process.wait()
            break
        except KeyboardInterrupt:  # Ctrl-C reached the launched processes too: they checkpoint and stop
            continue
    raise typer.Exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell reports it


NumProcesses = Annotated[Optional[int], typer.Option("--num-processes", help="Start N processes with `accelerate "
                                                     "launch` (e.g. one per GPU), counting every machine's.",
                                                     show_default=False)]
NumMachines = Annotated[Optional[int], typer.Option("--num-machines", help="Machines of the run: start the same "
                                                    "command on each, with its --machine-rank.", show_default=False)]
MachineRank = Annotated[Optional[int], typer.Option("--machine-rank", help="This machine's rank, 0 to N-1 (0: the "
                                                    "machine at --main-process-ip).", show_default=False)]
MainProcessIp = Annotated[Optional[str], typer.Option("--main-process-ip", help="Address of machine 0, reachable from "
                                                      "every machine.", show_default=False)]
MainProcessPort = Annotated[Optional[int], typer.Option("--main-process-port", help="A free TCP port on machine 0 "
                                                        "(default 29500).", show_default=False)]


# The options every training command takes, in this order after its own: one definition, the same meaning on each.
TRAINING_OPTIONS: dict[str, tuple[Any, Any]] = {
    "output_dir": (OutputDir, None), "max_steps": (MaxSteps, None), "epochs": (Epochs, None),
    "precision": (Precision, None), "num_processes": (NumProcesses, None), "num_machines": (NumMachines, None),
    "machine_rank": (MachineRank, None), "main_process_ip": (MainProcessIp, None),
    "main_process_port": (MainProcessPort, None), "resume": (Resume, False), "overwrite": (Overwrite, False),
    "set_": (Sets, None),
}


def training_command(func):
    """`func(**own options, shared=...)` as a command whose options are its own followed by TRAINING_OPTIONS; the
    shared ones reach `func` as one dict."""
    import functools
    import inspect

    own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "shared"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
             for name, (kind, default) in TRAINING_OPTIONS.items()]

    @functools.wraps(func)
    def command(**options: Any) -> None:
        func(**{name: options.pop(name) for name in [p.name for p in own]}, shared=options)

    command.__signature__ = inspect.Signature(own + added)  # what typer reads
    return command


def _machines(count: int | None, rank: int | None, ip: str | None, port: int | None) -> Any:
    from llmkit.environment import Machines

    return Machines(count if count is not None else 1, rank, ip, port)


@app.command(epilog="""Examples:

  llmkit prepare --data corpus/ -o prepared/wiki        # tokenizer trained on a sample of the corpus

  llmkit prepare --data wiki.jsonl.gz --tokenizer bert-base-uncased -o prepared/wiki

  torchrun --nnodes 4 --nproc_per_node 1 ... -m llmkit prepare --data /shared/corpus -o /shared/prepared

  llmkit pretrain --data prepared/wiki --max-steps 10000  # then train from it, as often as wanted""")
def prepare(
    recipe: Recipe = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", "-d", help="Text file, folder, .jsonl/.json/.csv/"
                                                      ".parquet file (optionally .gz/.zst) or `datasets` name. "
                                                      "Repeatable.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Use this checkpoint's tokenizer (for "
                                                 "continued pretraining).", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer path or name. Default: one "
                                                     "trained on a sample of the corpus.", show_default=False)] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Folder to write the prepared data "
                                                      "to.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a preparation made with other data or "
                                            "settings.")] = False,
    set_: Sets = None,
) -> None:
    """Tokenize a corpus once into memory-mapped shards that `llmkit pretrain --data DIR` trains from."""
    _quiet_libraries()

    def go():
        import json

        from llmkit import config, prepare as recipe_module
        from llmkit.console import is_main_process

        flags = {"data.train": data, "model.name": model, "model.tokenizer": tokenizer}
        cfg = config.build("pretrain", recipe, flags, set_)
        result = recipe_module.run(cfg, output_dir, overwrite=overwrite)
        if is_main_process():
            print(json.dumps(result))

    guarded(go)


@app.command(epilog="""Examples:

  llmkit pretrain                                   # tiny run on the built-in corpus

  llmkit pretrain cpu-quick --data corpus.txt -o runs/mlm

  llmkit pretrain modernbert-cpu --data corpus.txt      # a ModernBERT from scratch (or --arch modernbert)

  llmkit pretrain --model bert-base-uncased --data domain/ --max-steps 2000   # continued pretraining

  llmkit pretrain runs/mlm/llmkit.yaml              # rerun a finished run's exact config

  llmkit pretrain --data notes.jsonl --set data.text_column=body --set training.learning_rate=3e-4

  llmkit pretrain bert-base-gpu --num-processes 16 --num-machines 2 --machine-rank 0 --main-process-ip 10.0.0.1""")
@training_command
def pretrain(
    recipe: Recipe = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", "-d", help="Text file, folder, .jsonl/.json/.csv/"
                                                      ".parquet file or `datasets` name. Repeatable. Default: the "
                                                      "built-in sample corpus.", show_default=False)] = None,
    eval_data: Annotated[Optional[list[str]], typer.Option("--eval-data", help="Held-out data (default: a split of "
                                                           "--data).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Checkpoint to continue from (path or hub "
                                                 "name). Default: a new BERT of --size.", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer path or name. Default: the "
                                                     "model's, or one trained on the corpus.", show_default=False)] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="From scratch: bert (default) | modernbert | roberta | "
                                                "deberta-v2 | distilbert.", show_default=False)] = None,
    size: Annotated[Optional[str], typer.Option("--size", help="tiny 2x128 | mini 4x256 | small 4x512 | medium "
                                                "8x512 | base (BERT 12x768, ModernBERT 22x768) | large (layers x "
                                                "hidden).", show_default=False)] = None,
    max_seq_length: Annotated[Optional[int], typer.Option("--max-seq-length", help="Tokens per block.",
                                                          show_default=False)] = None,
    shared: dict | None = None,
) -> None:
    """Pretrain a masked language model (BERT-style), from scratch or from a checkpoint."""
    _train("pretrain", recipe, {"data.train": data, "data.eval": eval_data, "model.name": model,
                                "model.tokenizer": tokenizer, "model.arch": arch, "model.size": size,
                                "data.max_seq_length": max_seq_length}, shared)


@app.command(epilog="""Examples:

  llmkit finetune --data train.csv --eval-data dev.csv --model bert-base-uncased -o runs/clf

  llmkit finetune --data reviews.jsonl --model runs/mlm --text-column review --label-column stars

  llmkit finetune --data pairs.tsv --model runs/mlm --text-column s1 --text-pair-column s2

  llmkit finetune glue-sst2 --model bert-base-uncased        # a shipped recipe

  llmkit finetune --data train.conll --eval-data dev.conll --model bert-base-cased -o runs/ner   # entities""")
@training_command
def finetune(
    recipe: Recipe = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", "-d", help="Training data: CSV/TSV/JSONL/JSON/"
                                                      "parquet file or `datasets` name.", show_default=False)] = None,
    eval_data: Annotated[Optional[list[str]], typer.Option("--eval-data", help="Evaluation data (default: a "
                                                           "stratified split of --data).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Encoder checkpoint (path or hub name).",
                                                 show_default=False)] = None,
    text_column: Annotated[Optional[str], typer.Option("--text-column", help="Column with the text (default: "
                                                       "auto-detected).", show_default=False)] = None,
    text_pair_column: Annotated[Optional[str], typer.Option("--text-pair-column", help="Second text column for "
                                                            "sentence-pair tasks.", show_default=False)] = None,
    label_column: Annotated[Optional[str], typer.Option("--label-column", help="Column with the label (default: "
                                                        "auto-detected).", show_default=False)] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="text-classification or token-classification "
                                                "(default: token-classification for .conll/.iob/.bio files and "
                                                "list-of-words columns).", show_default=False)] = None,
    max_seq_length: Annotated[Optional[int], typer.Option("--max-seq-length", help="Truncate texts to N tokens.",
                                                          show_default=False)] = None,
    shared: dict | None = None,
) -> None:
    """Fine-tune a sequence classifier (or regressor) or a token classifier (entities, tagging) on labeled data."""
    _train("finetune", recipe, {"data.train": data, "data.eval": eval_data, "model.name": model,
                                "data.text_column": text_column, "data.text_pair_column": text_pair_column,
                                "data.label_column": label_column, "finetune.task": task,
                                "data.max_seq_length": max_seq_length}, shared)


def _train(command: str, recipe: str | None, flags: dict, shared: dict) -> None:
    """pretrain / finetune: the config from recipe < flags < --set, a launch when asked (only once the config is
    valid: bad settings exit 2 before any launch), the run, and its result on stdout."""
    _quiet_libraries()
    flags = {**flags, "output_dir": shared["output_dir"], "training.max_steps": shared["max_steps"],
             "training.num_train_epochs": shared["epochs"], "precision": shared["precision"]}
    machines = [shared[name] for name in ("num_machines", "machine_rank", "main_process_ip", "main_process_port")]

    def go():
        import importlib

        from llmkit import config

        cfg = config.build(command, recipe, flags, shared["set_"])
        _launch(shared["num_processes"], _machines(*machines))
        metrics = importlib.import_module(f"llmkit.{command}").run(cfg, resume=shared["resume"],
                                                                   overwrite=shared["overwrite"])
        _print_result(metrics, cfg.output_dir)

    guarded(go)


def _print_result(metrics: dict, output_dir: str) -> None:
    """The result of a training run on stdout: a few key metrics and where the run is."""
    import json

    from llmkit.console import is_main_process

    if not is_main_process():
        return
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print(json.dumps({"output_dir": str(Path(output_dir).resolve()), **shown}))


@app.command("fill-mask", epilog="""Examples:

  llmkit fill-mask runs/mlm "The capital of France is [MASK]."

  llmkit fill-mask bert-base-uncased "Paris is the [MASK] of [MASK]." --top-k 3

  llmkit fill-mask runs/mlm "I like [MASK]." --targets tea,coffee

  cat sentences.txt | llmkit fill-mask runs/mlm --input-file - --json > out.jsonl""")
def fill_mask(
    model: Annotated[str, typer.Argument(help="Masked-LM checkpoint: a path (e.g. an llmkit run) or hub name.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts with a mask ([MASK], <mask> or the model's "
                                                         "own).", show_default=False)] = None,
    input_file: Annotated[Optional[str], typer.Option("--input-file", "-i", help="Read texts from a file, one per "
                                                      "line ('-' for stdin).", show_default=False)] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Candidates per mask.")] = 5,
    targets: Annotated[Optional[str], typer.Option("--targets", help="Comma-separated words to score instead of "
                                                   "the whole vocabulary.", show_default=False)] = None,
    as_json: AsJson = False,
    batch_size: BatchSize = 64,
    device: Device = None,
    precision: Precision = None,
    runtime: Runtime = "auto",
) -> None:
    """Predict the masked tokens of texts with a masked language model."""
    _quiet_libraries()

    def go():
        from llmkit import fillmask as command

        command.main(model, texts or [], input_file=input_file, top_k=top_k, targets=targets, as_json=as_json,
                     batch_size=batch_size, device=device, precision=precision or "auto", runtime=runtime)

    guarded(go)


@app.command(epilog="""Examples:

  llmkit predict runs/clf "great movie" "terrible plot"

  llmkit predict runs/clf --input-file test.csv --output predictions.csv

  cat texts.txt | llmkit predict runs/clf --input-file - --json""")
def predict(
    model: Annotated[str, typer.Argument(help="Classifier checkpoint (e.g. an llmkit finetune run).")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to classify.", show_default=False)] = None,
    input_file: Annotated[Optional[str], typer.Option("--input-file", "-i", help="CSV/TSV/JSONL file or plain text "
                                                      "lines ('-' for stdin).", show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option("--output", help="Write predictions to this CSV/JSONL file.",
                                                  show_default=False)] = None,
    as_json: AsJson = False,
    text_column: Annotated[Optional[str], typer.Option("--text-column", help="Text column of a CSV/JSONL input.",
                                                       show_default=False)] = None,
    text_pair_column: Annotated[Optional[str], typer.Option("--text-pair-column", help="Second text column.",
                                                            show_default=False)] = None,
    batch_size: BatchSize = 64,
    device: Device = None,
    precision: Precision = None,
    runtime: Runtime = "auto",
) -> None:
    """Classify texts with a fine-tuned model: label names and scores, in input order."""
    _quiet_libraries()

    def go():
        from llmkit import predict as command

        command.main(model, texts or [], input_file=input_file, output=output, as_json=as_json,
                     text_column=text_column, text_pair_column=text_pair_column, batch_size=batch_size,
                     device=device, precision=precision or "auto", runtime=runtime)

    guarded(go)


@app.command(epilog="""Examples:

  llmkit export runs/mlm                     # runs/mlm/onnx/model.onnx, checked against transformers

  llmkit export runs/clf --quantize int8     # also onnx/model_quantized.onnx, with its agreement printed

  llmkit fill-mask runs/mlm "Paris is the [MASK] of France."   # now on ONNX Runtime (--runtime auto)""")
def export(
    run: Annotated[str, typer.Argument(help="Run directory (masked LM, sequence or token classifier) to export.")],
    quantize: Annotated[Optional[str], typer.Option("--quantize", help="int8: also write a dynamically quantized "
                                                    "model_quantized.onnx.", show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Probe texts for the checks, one per line (default: "
                                                "the built-in corpus).", show_default=False)] = None,
) -> None:
    """Export a run to ONNX (optimum's layout, RUN/onnx/), verified against transformers' logits."""
    _quiet_libraries()

    def go():
        import json

        from llmkit import export as command

        record = command.main(run, quantize=quantize, data=data)
        print(json.dumps({"export": str(Path(run).expanduser().resolve() / "onnx"), **{
            k: record[k] for k in ("task", "architecture", "max_abs_diff")}, **({"int8": record["int8"]}
                                                                                  if "int8" in record else {})}))

    guarded(go)


@app.command(epilog="""Examples:

  llmkit serve runs/mlm                         # http://127.0.0.1:8000/models/mlm

  llmkit serve runs/mlm runs/clf --port 9000    # several models, one server

  LLMKIT_API_KEY=secret llmkit serve runs/mlm --host 0.0.0.0    # other machines: a key is required

  curl -s localhost:8000/models/mlm -d '{"inputs": "Paris is the [MASK] of France.", "parameters": {"top_k": 3}}'

  curl -s localhost:8000/health""")
def serve(
    models: Annotated[list[str], typer.Argument(help="Masked-LM and/or classifier checkpoints to keep loaded.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0 to accept other machines; needs "
                                      "--api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port, printed at start).")] = 8000,
    device: Device = None,
    precision: Precision = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LLMKIT_API_KEY", show_default=False,
                                                   help="Every request but GET /health must send 'Authorization: "
                                                   "Bearer KEY'.")] = None,
    insecure_no_key: Annotated[bool, typer.Option("--insecure-no-key", help="Listen beyond localhost without a "
                                                  "key: anyone who reaches the port can use the models.")] = False,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Texts per forward pass across concurrent "
                                           "requests.")] = 64,
    max_request_bytes: Annotated[int, typer.Option("--max-request-bytes", help="Largest request body accepted.")] =
        1 << 20,
    max_connections: Annotated[int, typer.Option("--max-connections", help="Open connections; beyond, requests "
                                                 "get 503.")] = 512,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests waiting for a model; beyond, 503 at "
                                           "once.")] = 256,
    header_timeout: Annotated[float, typer.Option("--header-timeout", help="Seconds a client has to send a "
                                                  "request's headers.")] = 5.0,
    body_timeout: Annotated[float, typer.Option("--body-timeout", help="Seconds a client has to send a request's "
                                                "body.")] = 10.0,
    keep_alive_timeout: Annotated[float, typer.Option("--keep-alive-timeout", help="Seconds an idle connection "
                                                      "is kept open.")] = 5.0,
    runtime: Runtime = "auto",
) -> None:
    """Keep models loaded and answer fill-mask / text-classification requests over HTTP (inference API shapes)."""
    options = {**locals(), "precision": precision or "auto"}  # serve.main takes every option by its name
    _quiet_libraries()

    def go():
        from llmkit import serve as command

        command.main(options.pop("models"), **options)

    guarded(go)


@recipes_app.command("ls")
def recipes_ls() -> None:
    """List the shipped recipes with the command that runs each."""
    from llmkit import config

    def go():
        for name in config.recipe_names():
            first = config.recipe_path(name).read_text(encoding="utf-8").splitlines()[:1]
            command = first[0].lstrip("# ").strip() if first else ""
            print(f"{name:<24} {command}")
        accelerate = sorted((config.RECIPES_DIR / "accelerate").glob("*.yaml"))
        if accelerate:
            print("\nAccelerate configs (accelerate launch --config_file PATH -m llmkit ...):")
            for path in accelerate:
                print(f"  {path}")

    guarded(go)


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="Recipe name.")]) -> None:
    """Print a shipped recipe."""
    from llmkit import config

    guarded(lambda: print(config.recipe_path(name).read_text(encoding="utf-8"), end=""))


@recipes_app.command("cp")
def recipes_cp(name: Annotated[str, typer.Argument(help="Recipe name.")],
               dest: Annotated[str, typer.Argument(help="Destination file or folder.")]) -> None:
    """Copy a shipped recipe to edit it: `llmkit recipes cp cpu-quick my.yaml`."""
    from llmkit import config
    from llmkit.errors import OutputError

    def go():
        source = config.recipe_path(name)
        target = Path(dest)
        if target.is_dir():
            target = target / source.name
        if target.exists():
            raise OutputError(f"'{target}' already exists. Choose another destination.")
        target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
        print(target)

    guarded(go)


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Versions, devices, precision and the placement plan a run would use here."""
    def go():
        from llmkit import environment

        environment.main(as_json=as_json)

    guarded(go)


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False) -> None:
    if version:
        from llmkit import __version__

        print(__version__)
        raise typer.Exit(0)


def main() -> None:
    app()
