"""Where models run and in what precision: one place for training, inference and `llmkit env`.

- `device(name)`: cpu, cuda, cuda:N, mps (None: the GPU if one is visible, else the CPU), checked;
- `precision(requested, device)`: auto is bf16 where the hardware computes it natively (A100/H100-class GPUs,
  CPUs with AVX-512 BF16 or AMX), fp16 mixed precision on older GPUs, fp32 otherwise; a request the device
  cannot honour (fp16 off CUDA, bf16 on a GPU that only emulates it) is a one-line error;
- `autocast(precision, device)`: the matching `torch.autocast` context (or none for fp32);
- `keep_freed_memory()`: training on a CPU, large tensors come from the process's heap and stay there when freed.

torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigError, did_you_mean

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def has_accelerator() -> bool:
    """A GPU (CUDA/ROCm), Apple MPS or Intel XPU device is visible to torch."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


def visible_accelerator() -> str:
    """"cuda" or "mps" when this machine shows a GPU, judged without importing torch (a driver's device files,
    an Apple-silicon Mac); "" otherwise. For choosing a runtime before torch is needed at all."""
    import os
    import platform
    import sys

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return ""
    if any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")):
        return "cuda"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    return ""


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def device(name: str | None = None) -> Any:
    """A `torch.device` for `name` (None: cuda if visible, else cpu); unknown or absent devices are errors."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"Unknown device '{name}'. Use cpu, cuda, cuda:N or mps.") from None
    if target.type == "cuda" and (not torch.cuda.is_available() or (target.index or 0) >= torch.cuda.device_count()):
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ConfigError(f"Device '{name}' is not available: {visible} CUDA GPU(s) visible. Use --device cpu.")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"Device '{name}' is not available on this machine. Use --device cpu.")
    return target


def check_precision(requested: str) -> None:
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{requested}'."
                          f"{did_you_mean(requested, PRECISIONS)}")


def precision(requested: str, device_type: str | None = None) -> tuple[str, str]:
    """(precision, why) for `auto|bf16|fp16|fp32` on a device type (None: where training would run)."""
    import torch

    check_precision(requested)
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        name, native_bf16 = _gpu()
        if requested == "bf16" and not native_bf16:
            raise ConfigError(f"{name} only emulates bf16 (much slower than fp16). Use --precision fp16 or auto.")
        if requested != "auto":
            return requested, "requested"
        if native_bf16:
            return "bf16", f"{name} supports bf16"
        return "fp16", f"{name} has no bf16; using fp16 mixed precision"
    if requested == "fp16":
        raise ConfigError(f"precision fp16 needs a CUDA GPU; this run is on the {device_type.upper()}. Use "
                          f"--precision bf16 or fp32.")
    if requested != "auto":
        return requested, "requested"
    if device_type == "cpu" and cpu_has_bf16():
        return "bf16", "the CPU has native bf16 instructions (AVX-512 BF16 / AMX)"
    return "fp32", f"no native bf16 on this {device_type.upper()}"


def _gpu() -> tuple[str, bool]:
    """(name, native bf16) of this process's GPU, read without allocating on it. Under a launcher the process
    selects its own GPU (LOCAL_RANK) first, so no rank opens a context on GPU 0 just to ask."""
    import os

    import torch

    index = int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count())
    if "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(index)
    if torch.version.hip:
        return torch.cuda.get_device_name(index), torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index) >= (8, 0)


def autocast(precision_: str, device_: Any) -> Any:
    """`torch.autocast` to bf16/fp16 on the device, or a null context for fp32."""
    import torch

    if precision_ == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_.type, dtype=torch.bfloat16 if precision_ == "bf16" else torch.float16)


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed memory there for the next step (glibc only; True if
    set). Same numbers; only where the pages come from changes, and the peak memory a few percent.

    glibc gives each allocation over 32 MB (the most `M_MMAP_THRESHOLD` can be raised to) its own mmap and unmaps
    it on free, so a tensor that size made at every step, such as the dense gradient of a vocabulary-sized
    embedding (30,522 x 384 floats: 47 MB), is page-faulted and zeroed by the kernel at every step: a quarter of
    MiniLM's token-classification step on a CPU (benchmarks/ner.py), 8% of a mini BERT's pretraining step (its
    peak memory 1.31 GB against 1.26). Elsewhere (macOS, musl) nothing is changed."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
