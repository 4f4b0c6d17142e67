"""Benchmark: `llmkit serve` under concurrent clients, against calling `pipeline("fill-mask")` per request.

    python benchmarks/serve.py            # mini BERT, 8 clients, 20 s per measurement
    python benchmarks/serve.py --clients 1,8,32 --seconds 10

Each client keeps one HTTP/1.1 connection open (as session-based clients do), sends one masked sentence per request
(the inference API's {"inputs": ...}) and waits for the answer before sending the next. Reported: requests per
second and the median and 99th-percentile latency. The reference is the plain way to answer such requests one at
a time: a loop calling the pipeline once per request (its latency is one call; its throughput one call after
another). Same model, same sentences, same machine, one after the other.
Results: benchmarks/results/serve-*.json.
"""

from __future__ import annotations

import argparse
import http.client
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
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="masked-LM folder; default: a mini BERT built here")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--seconds", type=float, default=20.0)
    a = p.parse_args(argv)
    from fill_mask import build_mini_model, masked_sentences

    with tempfile.TemporaryDirectory(prefix="llmkit-serve-bench-") as tmp:
        model = a.model or str(build_mini_model(Path(tmp) / "mini"))
        texts = masked_sentences(2000)
        rows = [pipeline_loop(model, texts, a.seconds)]
        common.log(f"pipeline per request: {rows[0]['requests_per_s']:.1f} req/s")
        proc, url = start_server(model)
        try:
            for clients in (int(c) for c in a.clients.split(",")):
                rows.append(load(url, texts, clients, a.seconds))
                common.log(f"llmkit serve, {clients} clients: {rows[-1]['requests_per_s']:.1f} req/s")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report = {"benchmark": "serve", "machine": {**common.machine(), "load_average_end": os.getloadavg()}, "rows": rows}
    print(f"\n{'':36} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs pipeline':>12}")
    for row in rows:
        print(f"{row['name']:36} {row['requests_per_s']:8.1f} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f} "
              f"{row['requests_per_s'] / rows[0]['requests_per_s']:11.1f}x")
    print(f"results: {common.write_results('serve', report)}")


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


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", model, "--port", "0"], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for line in proc.stderr:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, found.group(1)
    raise SystemExit("the server did not start")


def load(url: str, texts: list[str], clients: int, seconds: float) -> dict[str, Any]:
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
    return summarise(f"llmkit serve, {clients} client{'s' if clients > 1 else ''}", latencies,
                     time.perf_counter() - start)


def summarise(name: str, latencies: list[float], wall: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {"name": name, "requests": len(latencies), "requests_per_s": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))]}


if __name__ == "__main__":
    main()
