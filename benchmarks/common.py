"""Helpers shared by the benchmarks: statistics, tables, result files, machine peak, extra corpus, interleaving.

Benchmarks run on shared, noisy machines. Two habits keep comparisons honest:
- interleave what is compared (A, B, A, B, ...) and report medians, never one run of each;
- say what the machine was doing (load average before and after).
`StepRing` interleaves whole training runs step by step: each run lives in its own process, and a
token passed around a ring lets exactly one of them compute at a time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
OFFLINE_AND_QUIET = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                     "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


class Printed:
    """Standard output, passed through and kept: `write_results` stores what the benchmark printed (its tables),
    which is what benchmarks/readme_figures.py checks the README's figures against."""

    def __init__(self, stream: Any):
        self.stream, self.parts = stream, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


PRINTED = sys.stdout = Printed(sys.stdout)


def offline_and_quiet(**more: str) -> None:
    """Every benchmark runs offline (models and data are on this machine) without the libraries' progress bars;
    `more` environment defaults on top. A variable the caller set already is kept."""
    for key, value in {**OFFLINE_AND_QUIET, **more}.items():
        os.environ.setdefault(key, value)


# ---------------------------------------------------------------- statistics and output


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and quartiles (of at least one value)."""
    values = sorted(values)
    if len(values) == 1:
        return {"median": values[0], "p25": values[0], "p75": values[0], "n": 1}
    q = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "p25": q[0], "p75": q[2], "n": len(values)}


def median_of(results: dict[str, list[dict[str, Any]]], side: str, key: str) -> float:
    """The median of `key` over one side's runs."""
    return statistics.median(r[key] for r in results[side])


def paired_ratios(results: dict[str, list[dict[str, Any]]], key: str, a: str = "llmkit",
                  b: str = "plain HF") -> list[float]:
    """Run i of `a` against run i of `b` (runs interleaved, so each pair saw the same machine)."""
    return [x[key] / y[key] for x, y in zip(results[a], results[b])]


def side_by_side(results: dict[str, list[dict[str, Any]]], rows: list[tuple[str, str, str]], a: str = "llmkit",
                 b: str = "plain HF") -> list[dict[str, Any]]:
    """Table rows {what, llmkit, hf, ratio} from (what, key, how): how is 'paired' (median of the paired ratios
    a/b: throughput), 'faster' (b/a of the medians: a time), 'diff' (a - b of the medians: a score) or 'ratio'
    (a/b of the medians)."""
    out = []
    for what, key, how in rows:
        x, y = median_of(results, a, key), median_of(results, b, key)
        ratio = {"paired": lambda: f"{statistics.median(paired_ratios(results, key, a, b)):.2f}x",
                 "faster": lambda: f"{y / x:.2f}x faster", "diff": lambda: f"{x - y:+.3f}",
                 "ratio": lambda: f"{x / y:.2f}x"}[how]()
        out.append({"what": f"{what} (median)", "llmkit": x, "hf": y, "ratio": ratio})
    return out


def print_side_by_side(rows: list[dict[str, Any]], hf: str, results: dict[str, list[dict[str, Any]]], score: str,
                       before: dict[str, Any]) -> None:
    """The side-by-side table (llmkit finetune against `hf`), then each run's `score` and speed ratio, llmkit's
    precision and the machine's load before and after."""
    print(table(rows, [("what", ""), ("llmkit", "llmkit finetune"), ("hf", hf), ("ratio", "llmkit vs HF")]))
    print(f"per-run {score}: llmkit {[round(r[score], 3) for r in results['llmkit']]}, plain HF "
          f"{[round(r[score], 3) for r in results['plain HF']]}; per-run speed ratios "
          f"{[round(r, 2) for r in paired_ratios(results, 'examples_per_s')]}; llmkit precision "
          f"{results['llmkit'][0]['precision']}; load average before {before['load_average']}, after {os.getloadavg()}")


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain-text table; `columns` are (key, header); values are preformatted or formatted here."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((_, h), w) in enumerate(zip(columns, widths)))
    out = [line, "-" * len(line)]
    for c in cells:
        out.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
    return "\n".join(out)


def machine() -> dict[str, Any]:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in _read("/proc/cpuinfo").splitlines()
                      if line.startswith("flags")), []))
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "torch": torch.__version__, "python": platform.python_version(), "load_average": os.getloadavg()}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """benchmarks/results/NAME-YYYYmmdd-HHMMSS.json (the folder is gitignored), with the command's arguments and
    everything it printed."""
    import atexit

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = {"script": Path(sys.argv[0]).stem, "argv": sys.argv[1:], "commit": commit(), **payload}

    def write() -> None:  # again at exit: the tables a benchmark prints after saving its results belong in them
        payload["printed"] = "".join(PRINTED.parts)
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")

    write()
    atexit.register(write)
    return path


def commit() -> str:
    """The checkout's commit ("+" when it has uncommitted changes), or "" outside git."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return head + ("+" if head and git("status", "--porcelain", "--untracked-files=no") else "")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine peak


def peak_matmul_flops(dtype_name: str, n: int = 2048, repeats: int = 8) -> float:
    """Best FLOP/s of an n x n @ n x n torch.matmul here (the GPU if there is one, else all CPU threads)."""
    import torch

    if torch.cuda.is_available():
        n = max(n, 8192)  # a GPU needs big matrices to reach its peak
    return 2 * n ** 3 / min(matmul_seconds(1, n, n, n, dtype_name, repeats))


def matmul_seconds(batch: int, m: int, k: int, n: int, dtype_name: str, repeats: int) -> list[float]:
    """Seconds of each of `repeats` torch.matmul calls, [m, k] @ [k, n] (batched when `batch` > 1), on random
    matrices here (the GPU if there is one, else all CPU threads), after one call to warm up."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, dtype_name)
    lead = (batch,) if batch > 1 else ()
    a = torch.randn(*lead, m, k, device=device).to(dtype)
    b = torch.randn(*lead, k, n, device=device).to(dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


# Dense bf16 / fp32 (TF32 for Ampere and later) tensor-core peaks from the vendors' data sheets, TFLOP/s.
PUBLISHED_PEAK = {"H200": (989, 494), "H100 SXM": (989, 494), "H100 PCIe": (756, 378), "H100": (989, 494),
                  "A100": (312, 156), "L40S": (362, 181), "A10": (125, 62), "L4": (121, 60), "V100": (125, 15.7),
                  "T4": (65, 8.1)}


def published_peak() -> dict[str, float] | None:
    """The GPU's published dense peak {"bfloat16": FLOP/s, "float32": FLOP/s}, if it is a GPU we know."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, (bf16, fp32) in PUBLISHED_PEAK.items():
        if key in name:
            return {"bfloat16": bf16 * 1e12, "float32": fp32 * 1e12, "name": name}
    return None


# ---------------------------------------------------------------- more real text


def docstring_corpus(max_bytes: int, packages: Sequence[str] = ("numpy", "torch", "transformers", "datasets",
                                                                "scipy", "pandas", "matplotlib", "sympy")) -> list[str]:
    """The built-in corpus plus docstring paragraphs of installed packages (read with `ast`, never imported),
    in a fixed order, up to `max_bytes` of UTF-8 text. Built on the spot; nothing is written to the repository."""
    from llmkit import data

    docs = list(data.builtin_corpus())
    size = sum(len(d.encode()) for d in docs)
    site = Path(sysconfig.get_paths()["purelib"])
    seen = set(docs)
    for package in packages:
        root = site / package
        if size >= max_bytes or not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            if "tests" in path.parts or "test" in path.parts:
                continue
            for para in data.docstring_paragraphs(path, min_words=6):
                if para not in seen and ">>>" not in para:
                    seen.add(para)
                    docs.append(para)
                    size += len(para.encode())
            if size >= max_bytes:
                break
    return docs


# ---------------------------------------------------------------- step-by-step interleaving of processes


class StepRing:
    """Lets N processes take turns: member i computes one step, then hands the turn to member i+1.

    Create it in the parent (it holds multiprocessing semaphores), pass it to each child with its index.
    Each member calls `start()` once before its first step, `step_done()` after every step and `finish()`
    after its last. `step_done` returns the seconds the member spent since it last got the turn: its own
    step, with the data loading, logging and callbacks around it, and nothing of the others.
    """

    def __init__(self, ctx: Any, members: int, timeout_s: float = 3600.0):
        self.members, self.timeout_s = members, timeout_s
        self.turns = [ctx.Semaphore(0) for _ in range(members)]
        self.barrier = ctx.Barrier(members)
        self.index = 0
        self._since = 0.0

    def member(self, index: int) -> "StepRing":
        import copy

        me = copy.copy(self)
        me.index = index
        return me

    def start(self) -> None:
        self.barrier.wait(self.timeout_s)  # everyone loaded: nobody's start-up overlaps anyone's step
        if self.index == 0:
            self.turns[0].release()
        self._wait()

    def step_done(self) -> float:
        elapsed = time.perf_counter() - self._since
        self.turns[(self.index + 1) % self.members].release()
        self._wait()
        return elapsed

    def finish(self) -> None:
        self.turns[(self.index + 1) % self.members].release()

    def _wait(self) -> None:
        if not self.turns[self.index].acquire(timeout=self.timeout_s):
            raise TimeoutError(f"ring member {self.index}: no turn within {self.timeout_s:.0f} s (a member died?)")
        self._since = time.perf_counter()


def run_ring(targets: list[tuple[str, Callable[..., None], tuple]], timeout_s: float = 3600.0) -> None:
    """Run each (name, function, args) in its own spawned process as a member of one StepRing.

    The function is called as fn(ring, *args). If one process fails, the others are stopped and an error raised.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ring = StepRing(ctx, len(targets), timeout_s)
    procs = []
    for i, (name, fn, args) in enumerate(targets):
        p = ctx.Process(target=fn, args=(ring.member(i), *args), name=name)
        p.start()
        procs.append(p)
    failed = None
    while any(p.is_alive() for p in procs):  # the ring (its named semaphores) must outlive every member
        for p in procs:
            p.join(timeout=1.0)
            if p.exitcode not in (None, 0) and failed is None:
                failed = p
        if failed is not None:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join()
            raise RuntimeError(f"benchmark process '{failed.name}' failed (exit code {failed.exitcode}); see its "
                               f"messages above")


def interleaved(jobs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """(seconds of each run, last result) per job, running the jobs in turn each round so a busy machine slows
    them all alike."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            results[name] = job()
            times[name].append(time.perf_counter() - start)
    return times, results


def fresh_processes(commands: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each command run as a new process, in turn, `repeats` times (`interleaved`); a command
    that fails stops the benchmark with its error output."""
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def job(name: str, command: list[str]) -> Callable[[], None]:
        def run() -> None:
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
        return run

    times, _ = interleaved({name: job(name, command) for name, command in commands.items()}, repeats)
    return times


def pipeline_script(task: str, call: str = "") -> str:
    """A plain Python script: `pipeline(task)` of the model argv[1] called on each non-empty line of the file
    argv[2] (with `call` appended to the call's arguments), one JSON result per line on stdout."""
    return (f"import json, sys\n"
            f"from transformers import pipeline\n"
            f"pipe = pipeline({task!r}, model=sys.argv[1], device='cpu')\n"
            f"with open(sys.argv[2], encoding='utf-8') as f:\n"
            f"    for line in f:\n"
            f"        if line.strip():\n"
            f"            print(json.dumps(pipe(line.rstrip('\\n'){call}), ensure_ascii=False))\n")


def whole_process(commands: dict[str, list[str]], lines: int, repeats: int,
                  out: Path) -> dict[str, tuple[float, float]]:
    """Median (wall seconds, peak RSS MB) of each command run as a fresh process, in turn, `repeats` times; each
    writes one result line per input line to `out` (checked)."""
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    walls: dict[str, list[float]] = {name: [] for name in commands}
    peaks: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            start = time.perf_counter()
            with open(out, "w") as sink:
                done = subprocess.run(["/usr/bin/time", "-f", "%M", *command], env=env, stdout=sink,
                                      stderr=subprocess.PIPE, text=True)
            walls[name].append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
            peaks[name].append(int(done.stderr.strip().splitlines()[-1]) / 1024)
            written = out.read_text(encoding="utf-8").count("\n")
            if written != lines:
                raise SystemExit(f"{name} wrote {written} results for {lines} inputs")
    return {name: (statistics.median(walls[name]), statistics.median(peaks[name])) for name in commands}


def print_whole_process(title: str, results: dict[str, tuple[float, float]]) -> None:
    print(f"\n{title:<40} {'wall s':>12} {'speed-up':>16} {'peak RSS MB':>12}")
    base = next(iter(results.values()))[0]
    for name, (wall, peak) in results.items():
        print(f"{name:<40} {wall:>12.2f} {base / wall:>15.2f}x {peak:>12,.0f}")


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a new spawned process (nothing imported or cached in memory beforehand); returns its result.

    A plain (non-daemonic) process, so that fn may start processes of its own (llmkit's tokenizing workers)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_send_result, args=(send, fn, args))
    process.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:
        ok, value = False, f"the process died (exit code {process.join() or process.exitcode})"
    process.join()
    if not ok:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in its process: {value}")
    return value


def _send_result(connection: Any, fn: Callable[..., Any], args: tuple) -> None:
    try:
        connection.send((True, fn(*args)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then re-raised here
        connection.send((False, f"{type(e).__name__}: {e}"))
        raise
