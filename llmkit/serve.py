"""`llmkit serve MODEL...`: keep models loaded and answer fill-mask and text-classification requests over HTTP.

Requests and responses have the shapes of the Hugging Face inference API, so existing clients work:

    POST /models/NAME   (or POST / for the first model)
    {"inputs": "Paris is the [MASK] of France.", "parameters": {"top_k": 3, "targets": ["capital", "city"]}}
    fill-mask, one input:    [{"score": 0.91, "token": 2364, "token_str": "capital", "sequence": "..."}, ...]
    text-classification:     [[{"label": "positive", "score": 0.97}, {"label": "negative", "score": 0.03}]]
    a list of inputs gives a list of such results, in order.
    GET /health              {"status": "ok", "models": {"NAME": "fill-mask", ...}}

Concurrent requests to a model are batched: the main thread (`run_jobs`) takes whatever is waiting and runs each
model's requests in forward passes of up to `max_batch` texts, so many small requests cost about as much as one
batch; HTTP is handled on other threads.
It never waits for more to arrive: requests that come in during a forward pass form the next batch, so a lone
request pays no batching delay (measured: 1 client 81 -> 106 requests/s against a 2 ms wait, 8 clients alike).
The server binds to 127.0.0.1 unless told otherwise; request bodies are limited (`max_request_bytes`) and so is
the number of inputs per request; a bad request gets a 4xx with a one-line JSON error and never stops the
server; SIGTERM and Ctrl-C stop it cleanly (requests in flight are answered first).

The standard library's ThreadingHTTPServer is enough here: a request's cost is the model's forward pass, which
the batching worker runs one at a time anyway; benchmarks/serve.py measures it against a pipeline per request.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llmkit.console import log
from llmkit.errors import ConfigError, DataError, LlmkitError

MAX_REQUEST_BYTES = 1 << 20
MAX_INPUTS = 256


class RequestError(Exception):
    """A request the server refuses: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    worker: "ModelWorker"
    texts: list[str]
    parameters: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Exception | None = None


class ModelWorker:
    """One loaded model; its requests go to the shared queue that `run_jobs` answers."""

    def __init__(self, name: str, task: str, loaded: Any, max_batch: int, jobs: "queue.Queue[Job]"):
        self.name, self.task, self.loaded, self.max_batch, self.jobs = name, task, loaded, max_batch, jobs

    def submit(self, texts: list[str], parameters: dict[str, Any], timeout: float = 300.0) -> Any:
        job = Job(self, texts, parameters)
        self.jobs.put(job)
        if not job.done.wait(timeout):
            raise RequestError(503, f"model '{self.name}' did not answer within {timeout:.0f} s")
        if job.error is not None:
            raise job.error
        return job.result


def run_jobs(jobs: "queue.Queue[Job]", stop: threading.Event) -> None:
    """Answer requests until `stop` is set and nothing is waiting: everything waiting is taken at once, and each
    model's requests with the same parameters share forward passes of up to its max_batch texts.

    This runs on the main thread, the models' only caller: torch's CPU thread pool serves a secondary thread
    poorly (measured on 2 cores: one fill-mask request took 8.0 ms from a worker thread, 4.0 ms from the main
    thread; batches of 8, 2.2 against 1.4 ms per text)."""
    while not (stop.is_set() and jobs.empty()):
        try:
            waiting = [jobs.get(timeout=0.2)]
        except queue.Empty:
            continue
        while True:  # never waits for more: requests arriving during a forward pass form the next batch
            try:
                waiting.append(jobs.get_nowait())
            except queue.Empty:
                break
        groups: dict[tuple[str, str], list[Job]] = {}
        for job in waiting:
            groups.setdefault((job.worker.name, json.dumps(job.parameters, sort_keys=True)), []).append(job)
        for group in groups.values():
            batch: list[Job] = []
            for job in group:
                if batch and sum(len(j.texts) for j in batch) + len(job.texts) > job.worker.max_batch:
                    _run(batch)
                    batch = []
                batch.append(job)
            _run(batch)


def _run(batch: list[Job]) -> None:
    worker = batch[0].worker
    try:
        texts = [t for job in batch for t in job.texts]
        results = answer(worker.task, worker.loaded, texts, batch[0].parameters)
        start = 0
        for job in batch:
            job.result, start = results[start:start + len(job.texts)], start + len(job.texts)
    except Exception as e:  # noqa: BLE001 - one bad batch must not stop the server
        for job in batch:
            job.error = e
    for job in batch:
        job.done.set()


def answer(task: str, loaded: Any, texts: list[str], parameters: dict[str, Any]) -> list[Any]:
    """One result per text, in the inference API's shapes."""
    if task == "fill-mask":
        from llmkit import fillmask

        results = fillmask.fill_mask(loaded, texts, top_k=parameters.get("top_k", 5),
                                     targets=parameters.get("targets"))
        out = []
        for result in results:
            per_mask = [[{"score": c["score"], "token": c["token_id"], "token_str": c["token"],
                          "sequence": c["sequence"]} for c in mask["candidates"]] for mask in result["masks"]]
            out.append(per_mask[0] if len(per_mask) == 1 else per_mask)  # the pipeline's shape
        return out
    from llmkit import inference

    logits = inference.classify(loaded, texts)
    top_k = parameters.get("top_k")
    out = []
    for record in inference.interpret(loaded.problem_type, logits, loaded.label_names):
        scores = record.get("scores") or {"score": record["score"]}
        ranked = sorted(({"label": k, "score": v} for k, v in scores.items()), key=lambda r: -r["score"])
        out.append(ranked[:top_k] if top_k else ranked)
    return out


def parse(body: bytes, task: str) -> tuple[list[str], bool, dict[str, Any]]:
    """(texts, whether one text was sent, parameters) of a request body; RequestError (400) when malformed."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(400, f"the body is not JSON ({str(e).splitlines()[0][:120]}); send "
                                f"{{\"inputs\": \"...\"}}") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError(400, "expected a JSON object with \"inputs\": a text or a list of texts")
    inputs, parameters = payload["inputs"], payload.get("parameters") or {}
    single = isinstance(inputs, str)
    texts = [inputs] if single else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise RequestError(400, "\"inputs\" must be a text or a non-empty list of texts")
    if len(texts) > MAX_INPUTS:
        raise RequestError(413, f"{len(texts)} inputs in one request; at most {MAX_INPUTS}: split the request")
    if not isinstance(parameters, dict):
        raise RequestError(400, "\"parameters\" must be a JSON object")
    top_k = parameters.get("top_k", 5 if task == "fill-mask" else None)
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise RequestError(400, f"parameters.top_k must be a positive integer, got {top_k!r}")
    targets = parameters.get("targets")
    if targets is not None and (task != "fill-mask" or not isinstance(targets, (str, list))):
        raise RequestError(400, "parameters.targets is for fill-mask: a word or a list of words")
    known = {"top_k", "targets"} if task == "fill-mask" else {"top_k"}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise RequestError(400, f"unknown parameter '{unknown[0]}' for {task}; known: {', '.join(sorted(known))}")
    return texts, single, {k: v for k, v in (("top_k", top_k), ("targets", targets)) if v is not None}


class Handler(BaseHTTPRequestHandler):
    server_version = "llmkit-serve"
    protocol_version = "HTTP/1.1"  # keep-alive: a session-based client reuses its connection
    # Headers and body leave in one write (flushed after each request), sent at once: with Nagle's algorithm a
    # separate small body write waits for the client's delayed ACK, ~40 ms per request on a kept-alive connection.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # one quiet line per error only
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            self.reply(200, {"status": "ok", "models": {w.name: w.task for w in self.server.workers.values()}})
        else:
            self.reply(404, {"error": f"no page {self.path}; POST /models/NAME or GET /health"})

    def do_POST(self) -> None:
        try:
            worker = self.worker()
            length = int(self.headers.get("Content-Length") or 0)
            if length > self.server.max_request_bytes:
                self.close_connection = True
                raise RequestError(413, f"request of {length:,} bytes; at most {self.server.max_request_bytes:,}")
            texts, single, parameters = parse(self.rfile.read(length), worker.task)
            results = worker.submit(texts, parameters)
            self.reply(200, results[0] if single else results)
        except RequestError as e:
            self.reply(e.status, {"error": str(e)})
        except LlmkitError as e:  # bad input found by the model side (no mask, unknown target, ...)
            self.reply(422 if isinstance(e, DataError) else 400, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the server answers and keeps running
            log(f"serve: {type(e).__name__}: {e}")
            self.reply(500, {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"})

    def worker(self) -> ModelWorker:
        workers = self.server.workers
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("", "/"):
            return next(iter(workers.values()))
        name = path.removeprefix("/models/")
        if path.startswith("/models/") and name in workers:
            return workers[name]
        raise RequestError(404, f"no model at {self.path}; models: " + ", ".join(f"/models/{n}" for n in workers))

    def reply(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog (socketserver's default, 5, resets a burst of connections)

    def __init__(self, address: tuple[str, int], workers: dict[str, ModelWorker], max_request_bytes: int):
        super().__init__(address, Handler)
        self.workers, self.max_request_bytes = workers, max_request_bytes


def load_models(models: list[str], device: str | None, precision: str, max_batch: int,
                jobs: "queue.Queue[Job]") -> dict[str, ModelWorker]:
    """Each model loaded once: masked LMs for fill-mask, sequence classifiers for text-classification."""
    from llmkit import fillmask, inference, lite, modeling

    workers = {}
    for model in models:
        modeling.check_model_path(model)
        local = (Path(model).expanduser() / "config.json").is_file()
        architectures = (lite.read_config(model) if local else modeling.read_config(model)).architectures or []
        task = "text-classification" if any(a.endswith("ForSequenceClassification") for a in architectures) \
            else "fill-mask"
        loaded = fillmask.load(model, device, precision) if task == "fill-mask" else \
            inference.load(model, task, device, precision)
        name = Path(model).name if Path(model).exists() else model
        if name in workers:
            raise ConfigError(f"Two models are named '{name}'. Give models with different names.")
        workers[name] = ModelWorker(name, task, loaded, max_batch, jobs)
        log(f"serve: /models/{name}: {task}, {type(loaded.model).__name__} on {loaded.device}, {loaded.precision}")
    return workers


def main(models: list[str], host: str = "127.0.0.1", port: int = 8000, device: str | None = None,
         precision: str = "auto", max_batch: int = 64, max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    if not models:
        raise ConfigError("llmkit serve needs at least one model: llmkit serve MODEL [MODEL...]")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}.")
    jobs: queue.Queue[Job] = queue.Queue()
    workers = load_models(models, device, precision, max_batch, jobs)
    try:
        server = Server((host, port), workers, max_request_bytes)
    except OSError as e:
        raise ConfigError(f"Cannot listen on {host}:{port} ({e.strerror}). Choose another --port.") from None
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()  # no new requests; those in flight finish

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    listening = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="llmkit-serve-http",
                                 daemon=True)
    listening.start()
    log(f"serving {', '.join(workers)} on http://{host}:{server.server_address[1]} (POST /models/NAME, GET /health)")
    try:
        run_jobs(jobs, stop)
    finally:
        server.shutdown()
        server.server_close()
        log("serve: stopped")
