"""`llmkit env`: what a run would do on this machine (versions, devices, precision, placement)."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("llmkit", "torch", "transformers", "datasets", "accelerate", "evaluate", "tokenizers", "typer")


def accelerate_config_file() -> Path | None:
    """The Accelerate config `accelerate launch` would pick up by default, if any."""
    explicit = os.environ.get("ACCELERATE_CONFIG_FILE")
    if explicit:
        return Path(explicit)
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    path = Path(home).expanduser() / "accelerate" / "default_config.yaml"
    return path if path.is_file() else None


def report() -> dict[str, Any]:
    import torch

    from llmkit.modeling import cpu_has_bf16, resolve_precision

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
    config_file = accelerate_config_file()
    warnings = []
    if config_file is not None:
        try:
            import yaml

            settings = yaml.safe_load(config_file.read_text()) or {}
        except Exception:  # noqa: BLE001 - reported, not fatal
            settings = {}
        wanted = int(settings.get("num_processes", 1) or 1)
        if settings.get("distributed_type", "NO") not in ("NO", None) and wanted > max(1, len(gpus)) and gpus:
            warnings.append(f"{config_file} asks for {wanted} processes but {len(gpus)} GPU(s) are visible: "
                            f"`accelerate launch` would use it; pass --config_file or fix it.")
        if settings.get("distributed_type") in ("MULTI_GPU",) and not gpus:
            warnings.append(f"{config_file} is a multi-GPU config but no GPU is visible: a stale default config? "
                            f"`accelerate launch` would pick it up; delete it or pass --config_file.")
    if world > 1:
        plan = f"{world} processes (launched), one device each"
    elif gpus:
        plan = (f"1 process on cuda:0; for all {len(gpus)} GPUs run `llmkit <command> ... --num-processes "
                f"{len(gpus)}`" if len(gpus) > 1 else "1 process on cuda:0")
    else:
        plan = f"1 process on the CPU ({torch.get_num_threads()} threads)"
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "native_bf16": cpu_has_bf16()},
        "cuda": {"available": torch.cuda.is_available(), "version": torch.version.cuda, "gpus": gpus},
        "precision": {"auto": precision, "why": why},
        "placement": plan,
        "accelerate_config": str(config_file) if config_file else None,
        "offline": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(k)},
        "warnings": warnings,
    }


def main(as_json: bool = False) -> None:
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
    print(f"placement:  {info['placement']}")
    print(f"accelerate: {info['accelerate_config'] or 'no default config file (accelerate launch uses its defaults)'}")
    for warning in info["warnings"]:
        print(f"warning:    {warning}")
