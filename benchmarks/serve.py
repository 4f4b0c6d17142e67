"""Benchmark: `llmkit serve` (uvicorn + starlette) against the previous server (http.server, 69c828c) and against
calling `pipeline("fill-mask")` per request, under concurrent clients.

    python benchmarks/serve.py            # mini BERT, clients 1, 8, 32, 20 s per measurement
    python benchmarks/serve.py --clients 1,8 --seconds 10

Each client keeps one HTTP/1.1 connection open (as session-based clients do), sends one masked sentence per request
(the inference API's {"inputs": ...}) and waits for the answer before sending the next. Reported: requests per
second, the median and 99th-percentile latency, and each server's peak resident memory (VmHWM, over the whole run).
Both servers run at once, load the same model with the same llmkit, and take turns at each client count (old new,
new old, ... `--rounds` turns each), so that a machine that gets busier during the run weighs on both alike.
The old server is the module as it was at 69c828c, written to a temporary folder and run with this llmkit.
The reference is the plain way to answer such requests one at a time: a loop calling the pipeline once per
request (its latency is one call; its throughput one call after another).
Results: benchmarks/results/serve-*.json.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.offline_and_quiet()
OLD_COMMIT = "69c828c"
ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="masked-LM folder; default: a mini BERT built here")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--seconds", type=float, default=20.0, help="per server and client count")
    p.add_argument("--rounds", type=int, default=4, help="alternating turns the seconds are split into")
    a = p.parse_args(argv)
    from fill_mask import build_mini_model, masked_sentences

    with tempfile.TemporaryDirectory(prefix="llmkit-serve-bench-") as tmp:
        model = a.model or str(build_mini_model(Path(tmp) / "mini"))
        texts = masked_sentences(2000)
        rows = [pipeline_loop(model, texts, a.seconds)]
        common.log(f"pipeline per request: {rows[0]['requests_per_s']:.1f} req/s")
        servers = {"old": start_server(old_server_command(model, Path(tmp))),
                   "new": start_server([sys.executable, "-m", "llmkit", "serve", model, "--port", "0"])}
        try:
            for clients in (int(c) for c in a.clients.split(",")):
                rows += compare(servers, texts, clients, a.seconds, a.rounds)
                common.log(", ".join(f"{r['name']}: {r['requests_per_s']:.1f} req/s" for r in rows[-2:]))
            memory = {name: peak_rss_mb(proc.pid) for name, (proc, _) in servers.items()}
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    report = {"benchmark": "serve", "old_server": f"llmkit/serve.py at {OLD_COMMIT} (http.server)",
              "new_server": "llmkit/serve.py (uvicorn + starlette)", "peak_rss_mb": memory,
              "machine": {**common.machine(), "load_average_end": os.getloadavg()}, "rows": rows}
    print_table(rows, memory)
    print(f"results: {common.write_results('serve', report)}")


def print_table(rows: list[dict[str, Any]], memory: dict[str, float | None]) -> None:
    reference = rows[0]
    print(f"\n{reference['name']}: {reference['requests_per_s']:.1f} req/s, p50 {reference['p50_ms']:.1f} ms\n")
    print(f"{'clients':>7} {'old req/s':>10} {'new req/s':>10} {'new/old':>8} {'old p50':>8} {'new p50':>8} "
          f"{'old p99':>8} {'new p99':>8}   (ms)")
    by = {(r["server"], r["clients"]): r for r in rows[1:]}
    for clients in sorted({r["clients"] for r in rows[1:]}):
        old, new = by[("old", clients)], by[("new", clients)]
        print(f"{clients:7d} {old['requests_per_s']:10.1f} {new['requests_per_s']:10.1f} "
              f"{new['requests_per_s'] / old['requests_per_s']:7.2f}x {old['p50_ms']:8.1f} {new['p50_ms']:8.1f} "
              f"{old['p99_ms']:8.1f} {new['p99_ms']:8.1f}")
    print("peak server memory (MB): " + ", ".join(f"{k} {v:.0f}" if v else f"{k} n/a" for k, v in memory.items()))


def pipeline_loop(model: str, texts: list[str], seconds: float) -> dict[str, Any]:
    from transformers import pipeline

    pipe = pipeline("fill-mask", model=model, device="cpu")
    pipe(texts[0], top_k=5)
    latencies, start, i = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        pipe(texts[i % len(texts)], top_k=5)
        latencies.append(time.perf_counter() - t)
        i += 1
    return summarise('pipeline("fill-mask") per request', latencies, time.perf_counter() - start)


def old_server_command(model: str, tmp: Path) -> list[str]:
    """The previous server module, from git, run by this llmkit. It read config.json with `llmkit.lite`; where that
    module is gone, `modeling.read_config` reads the same file (only the task is taken from it)."""
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:llmkit/serve.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    if importlib.util.find_spec("llmkit.lite") is None:
        source = source.replace("fillmask, inference, lite, modeling", "fillmask, inference, modeling")
        source = source.replace("lite.read_config(model)", "modeling.read_config(model)")
    folder = tmp / "old-server"
    folder.mkdir()
    (folder / "serve_old.py").write_text(source, encoding="utf-8")
    call = (f"import sys; sys.path.insert(0, {str(folder)!r}); import serve_old; "
            f"serve_old.main([{model!r}], port=0)")
    return [sys.executable, "-c", call]


def start_server(command: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for line in proc.stderr:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, found.group(1)
    raise SystemExit(f"the server did not start: {' '.join(command)}")


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory so far (Linux /proc VmHWM), in MB."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


def load(url: str, texts: list[str], clients: int, seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    where = urllib.parse.urlsplit(url)

    def client(k: int) -> None:
        """One HTTP/1.1 connection kept open, as session-based clients (requests.Session, httpx,
        huggingface_hub's InferenceClient) use one."""
        i, mine = k, []
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        while time.perf_counter() < stop:
            body = json.dumps({"inputs": texts[i % len(texts)]}).encode()
            t = time.perf_counter()
            connection.request("POST", where.path or "/", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"the server answered {response.status}")
            mine.append(time.perf_counter() - t)
            i += clients
        connection.close()
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def compare(servers: dict[str, tuple[subprocess.Popen, str]], texts: list[str], clients: int, seconds: float,
            rounds: int) -> list[dict[str, Any]]:
    """Each server measured `rounds` times for seconds/rounds, in alternating order (old new, new old, ...), so a
    change in the machine's load during the comparison falls on both alike."""
    measured: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in servers}
    for r in range(rounds):
        for name in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
            latencies, wall = load(servers[name][1], texts, clients, seconds / rounds)
            measured[name] = (measured[name][0] + latencies, measured[name][1] + wall)
    return [{"server": name, "clients": clients, **summarise(f"{name} server, {clients} client"
                                                            f"{'s' if clients > 1 else ''}", latencies, wall)}
            for name, (latencies, wall) in measured.items()]


def summarise(name: str, latencies: list[float], wall: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {"name": name, "requests": len(latencies), "requests_per_s": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))]}


if __name__ == "__main__":
    main()
