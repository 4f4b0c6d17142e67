"""`llmkit env`: what a run would do on this machine (versions, devices, precision, placement).

Also the launch plan of `--num-processes N` (`launch_command`), shared with the CLI so that what `llmkit env`
prints is what a run does. Importing this module stays cheap (no torch): the CLI uses it before launching.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from llmkit.console import is_main_process

PACKAGES = ("llmkit", "torch", "transformers", "datasets", "accelerate", "evaluate", "tokenizers", "onnxruntime",
            "uvicorn", "typer")

# Accelerate configs that place processes on GPUs (or other accelerators), as opposed to NO / MULTI_CPU.
DEVICE_TYPES = {"MULTI_GPU", "FSDP", "DEEPSPEED", "MEGATRON_LM", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA",
                "MULTI_MUSA", "MULTI_XPU", "MULTI_HPU", "MULTI_NEURON", "XLA"}


def default_accelerate_config_path() -> Path:
    """Where `accelerate launch` looks for its config when given no --config_file (and no --cpu): accelerate's
    own `default_yaml_config_file` ($HF_HOME/accelerate/default_config.yaml, fixed when accelerate is imported)."""
    from accelerate.commands.config.config_args import default_yaml_config_file

    return Path(default_yaml_config_file)


def accelerate_config_file() -> Path | None:
    """The default Accelerate config that `accelerate launch` would pick up here, if there is one."""
    path = default_accelerate_config_path()
    return path if path.is_file() else None


def read_accelerate_config(path: Path) -> tuple[dict[str, Any], str | None]:
    """(settings, problem): the raw YAML mapping, and why `accelerate launch` could not use it (None if fine)."""
    import yaml

    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return {}, f"cannot be read: {str(e).splitlines()[0]}"
    if not isinstance(settings, dict):
        return {}, "is not a YAML mapping"
    if "distributed_type" not in settings:
        return settings, "has no distributed_type"
    return settings, None


@dataclass
class Machines:
    """`--num-machines`, `--machine-rank`, `--main-process-ip`, `--main-process-port` of a launch (accelerate's)."""

    count: int = 1
    rank: int | None = None
    ip: str | None = None
    port: int | None = None

    def flags(self) -> list[str]:
        if self.count <= 1:
            return ["--num_machines", "1"] + (["--main_process_port", str(self.port)] if self.port is not None else [])
        return ["--num_machines", str(self.count), "--machine_rank", str(self.rank), "--main_process_ip",
                str(self.ip), "--main_process_port", str(self.port if self.port is not None else 29500),
                "--same_network"]


def check_machines(machines: Machines) -> None:
    """The machine options together, checked before anything is launched (all problems in one message)."""
    from llmkit.errors import ConfigError

    problems = []
    if machines.count < 1:
        problems.append(f"--num-machines must be 1 or more, got {machines.count}")
    elif machines.count == 1:
        if machines.rank not in (None, 0) or machines.ip is not None:
            problems.append("--machine-rank and --main-process-ip are for runs over several machines: add "
                            "--num-machines N (N >= 2)")
    else:
        if machines.rank is None or not 0 <= machines.rank < machines.count:
            found = "none" if machines.rank is None else str(machines.rank)
            problems.append(f"--machine-rank must be 0 to {machines.count - 1} (0 on the machine at --main-process-ip), "
                            f"got {found}")
        if not machines.ip:
            problems.append("--main-process-ip is needed: the address of machine 0, reachable from every machine")
        if machines.port == 0:  # each machine would pick its own free port, and they would never meet
            problems.append("--main-process-port 0 (any free port) works on one machine only: give every machine "
                            "the same port, e.g. --main-process-port 29500")
    if machines.port is not None and not 0 <= machines.port <= 65535:
        problems.append(f"--main-process-port must be a TCP port (1-65535, 0: any free one), got {machines.port}")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def launch_command(num_processes: int, llmkit_args: list[str],
                   machines: Machines | None = None) -> tuple[list[str], str]:
    """The `accelerate launch` command that `llmkit ... --num-processes N` runs, and what it will do.

    With no Accelerate config (or one for a single process / CPU), `--multi_gpu` asks for N data-parallel
    processes: one per GPU, or CPU processes joined with gloo when no GPU is visible (`accelerate launch
    --num_processes N` alone would start a single process there). A config for DDP, FSDP or DeepSpeed
    decides the kind; N overrides its process count. N counts the processes of all machines (as accelerate's
    --num_processes does); `machines` adds accelerate's multi-machine flags.
    """
    machines = machines or Machines()
    config = accelerate_config_file()
    settings = read_accelerate_config(config)[0] if config else {}
    kind = str(settings.get("distributed_type", "NO"))
    flags = ["--num_processes", str(num_processes)]
    if kind in DEVICE_TYPES:
        why = f"{kind} per the Accelerate config {config}"
        if machines.count > 1 or machines.port is not None:
            flags += machines.flags()
    else:
        flags = ["--multi_gpu", *flags, "--gpu_ids", "all"]
        if config is None or machines.count > 1 or machines.port is not None:
            flags += machines.flags()
        if config is None:  # values a config would give; passing them keeps accelerate from warning about each
            flags += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        why = "data parallel: one process per GPU, or CPU processes joined with gloo when no GPU is visible"
    if machines.count > 1:
        why += (f"; machine {machines.rank} of {machines.count}, {num_processes // machines.count} process(es) "
                f"here, machine 0 at {machines.ip}")
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "-m", "llmkit", *llmkit_args], why


def check_processes(num_processes: int, gpus: int, machines: int = 1) -> None:
    """More processes on this machine than its visible GPUs would put two ranks on one GPU (NCCL fails at the
    first barrier with "Duplicate GPU detected"); CPU runs (no GPU visible) may use any number. Over several
    machines, N counts all of them: each runs N / machines."""
    from llmkit.errors import ConfigError

    if num_processes < 1:
        raise ConfigError(f"--num-processes must be 1 or more, got {num_processes}.")
    if num_processes % machines:
        raise ConfigError(f"--num-processes {num_processes} counts the processes of all {machines} machines and must "
                          f"be a multiple of {machines}: use --num-processes {machines * max(1, gpus)} "
                          f"({max(1, gpus)} per machine).")
    here = num_processes // machines
    if gpus and here > gpus:
        per = f" ({here} on each of {machines} machines)" if machines > 1 else ""
        raise ConfigError(f"--num-processes {num_processes} asks for more processes than the {gpus} visible GPU(s)"
                          f"{per}: two would share a GPU. Use --num-processes {gpus * machines} (or make more GPUs "
                          f"visible).")


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def shown(command: list[str]) -> str:
    """A launch command as the user would type it."""
    if command[1:3] == ["-m", "accelerate.commands.launch"]:
        command = ["accelerate", "launch", *command[3:]]
    return shlex.join(command)


def config_warnings(path: Path, settings: dict[str, Any], problem: str | None, gpus: int) -> list[str]:
    """What is stale or surprising about the default Accelerate config on this machine."""
    if problem:
        return [f"{path} {problem}: `accelerate launch` without --config_file would fail; fix or delete it."]
    warnings = []
    try:  # accelerate's own loader: unknown keys and invalid values fail here as they would at launch
        from accelerate.commands.config.config_args import load_config_from_file

        load_config_from_file(str(path))
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        warnings.append(f"{path} is not a valid Accelerate config ({str(e).splitlines()[0][:200]}): "
                        f"`accelerate launch` would fail; fix or delete it.")
    kind = str(settings.get("distributed_type"))
    wanted = int(settings.get("num_processes") or 1)
    if kind in DEVICE_TYPES and not gpus:
        warnings.append(f"{path} is a {kind} config but no GPU is visible (a stale default config?): "
                        f"`accelerate launch` would use it; delete it, or pass --config_file or --cpu.")
    elif kind in DEVICE_TYPES and wanted > gpus:
        warnings.append(f"{path} asks for {wanted} processes but {gpus} GPU(s) are visible: pass --num_processes "
                        f"{gpus} (llmkit: --num-processes {gpus}) or fix the config.")
    if int(settings.get("num_machines") or 1) > 1:
        warnings.append(f"{path} is for {settings['num_machines']} machines: `accelerate launch` on this machine "
                        f"alone waits for the others to join.")
    if settings.get("mixed_precision") not in (None, "no"):
        warnings.append(f"{path} sets mixed_precision={settings['mixed_precision']}; llmkit ignores it and uses "
                        f"--precision (printed above).")
    if settings.get("compute_environment") == "AMAZON_SAGEMAKER":
        warnings.append(f"{path} launches on Amazon SageMaker, not on this machine.")
    return warnings


def report() -> dict[str, Any]:
    import torch

    from llmkit.devices import cpu_has_bf16, has_accelerator, precision as resolve_precision
    from llmkit.modeling import resolve_attention

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpus = [{"index": i, "name": torch.cuda.get_device_name(i),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())]
    precision, why = resolve_precision("auto")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        device = "GPU" if gpus else "CPU process (gloo)"
        plan = f"{world} processes (launched), one {device} each, data parallel"
    elif len(gpus) > 1:
        plan = (f"1 process on cuda:0 of {len(gpus)} visible GPUs; to use them all: llmkit <command> ... "
                f"--num-processes {len(gpus)}")
    elif gpus:
        plan = "1 process on cuda:0"
    else:
        plan = f"1 process on the CPU ({torch.get_num_threads()} threads)"
    config_file = accelerate_config_file()
    warnings: list[str] = []
    if config_file is not None:
        settings, problem = read_accelerate_config(config_file)
        warnings += config_warnings(config_file, settings, problem, len(gpus))
    processes = len(gpus) if gpus else 2  # one per GPU; CPU processes for a try-out
    launch, launch_why = launch_command(processes, ["COMMAND", "..."])
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "native_bf16": cpu_has_bf16()},
        "cuda": {"available": torch.cuda.is_available(), "version": torch.version.cuda, "gpus": gpus},
        "precision": {"auto": precision, "why": why},
        "attention": {family: resolve_attention("auto", "cuda" if gpus else "accelerator" if has_accelerator()
                                                else "cpu", family)[0] for family in ("bert", "modernbert")},
        "placement": plan,
        "accelerate_config": str(config_file) if config_file else None,
        "num_processes_launch": {"processes": processes, "command": shown(launch), "what": launch_why},
        "offline": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(k)},
        "warnings": warnings,
    }


def main(as_json: bool = False) -> None:
    if not is_main_process():  # `llmkit env` under a launcher: one report, from the main process
        return
    info = report()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    v = info["versions"]
    print("versions:   " + "  ".join(f"{k} {v[k] or '-'}" for k in PACKAGES))
    print(f"python:     {info['python']} on {info['platform']}")
    cpu = info["cpu"]
    print(f"cpu:        {cpu['cores']} cores, torch uses {cpu['torch_threads']} threads, native bf16: "
          f"{'yes' if cpu['native_bf16'] else 'no'}")
    gpus = info["cuda"]["gpus"]
    print("gpus:       " + (", ".join(f"cuda:{g['index']} {g['name']} ({g['memory_gib']} GiB)" for g in gpus)
                            if gpus else "none"))
    print(f"precision:  {info['precision']['auto']} ({info['precision']['why']}); override with --precision")
    chosen = set(info["attention"].values())
    print("attention:  " + (chosen.pop() if len(chosen) == 1 else ", ".join(f"{k} {v}" for k, v in
                                                                         info["attention"].items()))
          + " for training (model.attn_implementation=auto; eager on a CPU; on CUDA flash-attn if usable, "
          "flex_attention for ModernBERT without it, else sdpa)")
    print(f"placement:  {info['placement']}")
    print(f"accelerate: {info['accelerate_config'] or 'no default config file (accelerate launch uses its defaults)'}")
    launch = info["num_processes_launch"]
    print(f"--num-processes {launch['processes']} runs: {launch['command']}")
    print(f"            ({launch['what']})")
    for warning in info["warnings"]:
        print(f"warning:    {warning}")
