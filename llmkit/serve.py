"""`llmkit serve MODEL...`: keep models loaded and answer fill-mask, text- and token-classification requests over HTTP.

Requests and responses have the shapes of the Hugging Face inference API, so existing clients work
(`huggingface_hub.InferenceClient(base_url=...)`: `fill_mask`, `text_classification`, `token_classification`):

    POST /models/NAME   (or POST / for the first model)
    {"inputs": "Paris is the [MASK] of France.", "parameters": {"top_k": 3, "targets": ["capital", "city"]}}
    fill-mask, one input:    [{"score": 0.91, "token": 2364, "token_str": "capital", "sequence": "..."}, ...]
    text-classification:     [[{"label": "positive", "score": 0.97}, {"label": "negative", "score": 0.03}]]
    token-classification:    [{"entity_group": "PER", "score": 0.98, "word": "ada lovelace", "start": 0, "end": 12}]
                             (parameters: aggregation_strategy "simple", ignore_labels, stride)
    a list of inputs gives a list of such results, in order (one list per text).
    GET /health              {"status": "ok", "models": {"NAME": "fill-mask", ...}}
    GET /openapi.json        the endpoints, described for OpenAPI tools

Concurrent requests to a model are batched: the main thread (`run_jobs`) takes whatever is waiting and runs each
model's requests in forward passes of up to `max_batch` texts, so many small requests cost about as much as one
batch; HTTP is handled by uvicorn's event loop on another thread.
It never waits for more to arrive: requests that come in during a forward pass form the next batch, so a lone
request pays no batching delay (measured: 1 client 81 -> 106 requests/s against a 2 ms wait, 8 clients alike).
A request whose client went away, or that waited past `answer_timeout`, is flagged and skipped, never run later.

What a client can make the server hold is bounded, whatever it sends: the body (`max_request_bytes`, counted as it
arrives, for a Content-Length and for chunked bodies alike), the time to send the headers and the body
(`header_timeout`, `body_timeout`; uvicorn bounds only the wait between requests), the number of connections and
of requests waiting for a model (both answered 503 at once beyond the bound), and the inputs per request. A
malformed request gets a 4xx with a one-line JSON error and never stops the server. Beyond localhost, every request
but GET /health needs `Authorization: Bearer KEY`. SIGTERM and Ctrl-C stop it cleanly (requests in flight are
answered first).

uvicorn + starlette rather than `http.server`: a maintained HTTP parser (h11) and one event loop for any number of
slow clients, where a thread per connection let each stalled client hold a thread. A subclass of uvicorn's h11
protocol (`protocol_class`) adds what uvicorn lacks: the header deadline, JSON for the 400s it writes itself, and
closing a connection answered before its body was read (uvicorn would read the rest and drop it, without end).
Connections are counted by `Guard`, as uvicorn's `limit_concurrency` counts them, so that its 503 is JSON too.
All of it is tested over sockets (tests/test_serve.py).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import queue
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h11

from llmkit.console import log
from llmkit.errors import ConfigError, DataError, LlmkitError, RunError

MAX_REQUEST_BYTES = 1 << 20
MAX_INPUTS = 256
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass
class Limits:
    """What one client can make the server hold. Times in seconds."""

    max_request_bytes: int = MAX_REQUEST_BYTES
    max_connections: int = 512
    max_queue: int = 256  # requests waiting for a model; beyond it a request is answered 503 at once
    header_timeout: float = 5.0
    body_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    answer_timeout: float = 300.0

    def check(self) -> None:
        bad = [f"--{name.replace('_', '-')} must be positive, got {value}" for name, value in vars(self).items()
               if not value > 0]
        if bad:
            raise ConfigError("; ".join(bad) + ".")


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
    settle: Callable[[Any, Exception | None], None]  # called by the model runner with (result, error)
    cancelled: bool = False  # the request is gone (client disconnected, or it timed out): do not run it


class ModelWorker:
    """One loaded model; its requests go to the shared queue that `run_jobs` answers."""

    def __init__(self, name: str, task: str, loaded: Any, max_batch: int, jobs: "queue.Queue[Job]"):
        self.name, self.task, self.loaded, self.max_batch, self.jobs = name, task, loaded, max_batch, jobs

    def submit(self, texts: list[str], parameters: dict[str, Any]) -> tuple[Job, "asyncio.Future[Any]"]:
        """Queue the texts (from the event loop); the future gets their results. 503 when the queue is full."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(result: Any, error: Exception | None) -> None:
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: the server stopped and nobody waits for this answer
                pass

        job = Job(self, texts, parameters, settle)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise RequestError(503, f"the server is busy ({self.jobs.maxsize} requests waiting); retry "
                                    "shortly") from None
        return job, future


def _settle(future: "asyncio.Future[Any]", result: Any, error: Exception | None) -> None:
    if not future.done():
        future.set_exception(error) if error is not None else future.set_result(result)


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
    live = [job for job in batch if not job.cancelled]  # checked at the last moment: earlier batches take time
    if len(live) < len(batch):
        log(f"serve: skipped {len(batch) - len(live)} request(s) whose client left or timed out")
    if not live:
        return
    batch = live
    worker = batch[0].worker
    try:
        texts = [t for job in batch for t in job.texts]
        results = answer(worker.task, worker.loaded, texts, batch[0].parameters)
    except Exception as e:  # noqa: BLE001 - one bad batch must not stop the server; each request gets the error
        for job in batch:
            job.settle(None, e)
        return
    start = 0
    for job in batch:
        job.settle(results[start:start + len(job.texts)], None)
        start += len(job.texts)


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
    if task == "token-classification":
        from llmkit import entities

        return entities.find(loaded, texts, stride=parameters.get("stride"),
                             ignore_labels=parameters.get("ignore_labels", ("O",)))
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
    except RecursionError:
        raise RequestError(400, "the body nests JSON too deeply; send {\"inputs\": \"...\"}") from None
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
    top_k = parameters.get("top_k", 5 if task == "fill-mask" else None) if task != "token-classification" else None
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise RequestError(400, f"parameters.top_k must be a positive integer, got {top_k!r}")
    targets = parameters.get("targets")
    if targets is not None and (task != "fill-mask" or not isinstance(targets, (str, list))):
        raise RequestError(400, "parameters.targets is for fill-mask: a word or a list of words")
    if task == "token-classification":
        return texts, single, token_parameters(parameters)
    known = {"top_k", "targets"} if task == "fill-mask" else {"top_k"}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise RequestError(400, f"unknown parameter '{unknown[0]}' for {task}; known: {', '.join(sorted(known))}")
    return texts, single, {k: v for k, v in (("top_k", top_k), ("targets", targets)) if v is not None}


def token_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """token-classification's parameters, checked: aggregation_strategy (only "simple", the grouping `predict`
    gives), ignore_labels (tags left out, default ["O"]), stride (the overlap of windows over a long text)."""
    known = {"aggregation_strategy", "ignore_labels", "stride"}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise RequestError(400, f"unknown parameter '{unknown[0]}' for token-classification; known: "
                                f"{', '.join(sorted(known))}")
    strategy = parameters.get("aggregation_strategy")
    if strategy not in (None, "simple"):
        raise RequestError(400, f"parameters.aggregation_strategy {strategy!r} is not served; use \"simple\" (the "
                                f"default: adjacent pieces of one entity type joined)")
    ignore = parameters.get("ignore_labels")
    if ignore is not None and (not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore)):
        raise RequestError(400, "parameters.ignore_labels must be a list of tag names")
    stride = parameters.get("stride")
    if stride is not None and (not isinstance(stride, int) or isinstance(stride, bool) or stride < 0):
        raise RequestError(400, f"parameters.stride must be a non-negative integer, got {stride!r}")
    return {k: v for k, v in (("ignore_labels", ignore), ("stride", stride)) if v is not None}


def shaped(task: str, results: list[Any], single: bool) -> Any:
    """The inference API's answer: one fill-mask input gets its candidates, one token-classification input its
    entities; text-classification always gets a list with one ranking per text (InferenceClient.text_classification
    reads the first)."""
    return results[0] if single and task in ("fill-mask", "token-classification") else results


# --- HTTP ---------------------------------------------------------------------------------------------------------


def reply(status: int, payload: Any, headers: dict[str, str] | None = None):
    from starlette.responses import Response

    return Response(json.dumps(payload, ensure_ascii=False), status, headers, media_type="application/json")


def error(status: int, message: str, headers: dict[str, str] | None = None):
    return reply(status, {"error": " ".join(str(message).split())[:500]}, headers)


def raw_error(status: int, message: str) -> bytes:
    """A whole JSON error response that closes the connection, for the protocol to write itself."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + body


async def read_body(request: Any, limit: int, timeout: float) -> bytes:
    """The body, counted as it arrives (chunked or not): 413 once over `limit`, 408 when slower than `timeout`."""
    declared = request.headers.get("content-length", "").strip()
    if declared:
        if not re.fullmatch(r"[0-9]+", declared):  # h11 refuses these first; kept for any other parser
            raise RequestError(400, f"Content-Length must be a number of bytes, got {declared[:40]!r}")
        if len(declared) > 18 or int(declared) > limit:  # never int() of thousands of digits
            shown = f"{int(declared):,}" if len(declared) <= 18 else declared[:40] + "..."
            raise RequestError(413, f"request of {shown} bytes; at most {limit:,}")

    async def collect() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"request body over {limit:,} bytes; at most {limit:,}")
        return bytes(body)

    try:
        return await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout:g} s") from None


async def answered(request: Any, worker: ModelWorker, texts: list[str], parameters: dict[str, Any],
                   timeout: float) -> list[Any]:
    """The model's results for the texts. A client that disconnects, or a wait past `timeout`, cancels the job."""
    from starlette.requests import ClientDisconnect

    job, future = worker.submit(texts, parameters)
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({future, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return future.result()
        if gone in done:
            raise ClientDisconnect()
        raise RequestError(503, f"model '{worker.name}' did not answer within {timeout:g} s")
    finally:
        job.cancelled = not future.done()
        gone.cancel()


async def _disconnected(receive: Callable) -> None:
    while (await receive())["type"] != "http.disconnect":  # the body was read: only a disconnect comes now
        pass


async def predict(request: Any):
    """Fill-mask, text- or token-classification, by the model's task.
    ---
    summary: Answer one text or a list of texts (the Hugging Face inference API's request and answer)
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [inputs]
            properties:
              inputs: {oneOf: [{type: string}, {type: array, items: {type: string}, maxItems: 256}]}
              parameters:
                type: object
                properties:
                  top_k: {type: integer, minimum: 1}
                  targets: {oneOf: [{type: string}, {type: array, items: {type: string}}]}
                  aggregation_strategy: {type: string, enum: [simple]}
                  ignore_labels: {type: array, items: {type: string}}
                  stride: {type: integer, minimum: 0}
    responses:
      200: {description: "fill-mask: [{score, token, token_str, sequence}] per text; text-classification:
        [[{label, score}]] one list per text; token-classification: [{entity_group, score, word, start, end}] per
        text"}
      4XX: {description: "{\\"error\\": \\"...\\"}: a bad request, a wrong key (401), a body too large (413)"}
      503: {description: "{\\"error\\": \\"...\\"}: the server is busy; retry"}
    """
    from starlette.requests import ClientDisconnect

    state = request.app.state
    try:
        worker = find_worker(state.workers, request)
        body = await read_body(request, state.limits.max_request_bytes, state.limits.body_timeout)
        texts, single, parameters = parse(body, worker.task)
        results = await answered(request, worker, texts, parameters, state.limits.answer_timeout)
        return reply(200, shaped(worker.task, results, single))
    except RequestError as e:  # a body refused or late was not read to its end: the connection closes
        return error(e.status, str(e), {"connection": "close"} if e.status in (408, 413) else None)
    except LlmkitError as e:  # bad input found by the model side (no mask, unknown target, ...)
        return error(422 if isinstance(e, DataError) else 400, str(e))
    except ClientDisconnect:
        return error(400, "the client disconnected")  # nobody reads it; the job was cancelled
    except Exception as e:  # noqa: BLE001 - the server answers and keeps running
        log(f"serve: {type(e).__name__}: {e}")
        return error(500, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")


def find_worker(workers: dict[str, ModelWorker], request: Any) -> ModelWorker:
    name = request.path_params.get("name", "").rstrip("/")
    if not name:
        return next(iter(workers.values()))
    if name in workers:
        return workers[name]
    raise RequestError(404, f"no model at {request.url.path}; models: " + ", ".join(f"/models/{n}" for n in workers))


async def health(request: Any):
    """Which models are served, and their tasks (needs no key).
    ---
    summary: The server is up
    responses:
      200: {description: "{\\"status\\": \\"ok\\", \\"models\\": {NAME: TASK}}"}
    """
    return reply(200, {"status": "ok", "models": {w.name: w.task for w in request.app.state.workers.values()}})


async def openapi(request: Any):
    return reply(200, request.app.state.schemas.get_schema(routes=request.app.routes))


async def http_error(request: Any, exc: Any):
    message = f"no page {request.url.path}; POST /models/NAME or GET /health" if exc.status_code == 404 else \
        f"{request.method} is not answered at {request.url.path}; POST /models/NAME or GET /health" \
        if exc.status_code == 405 else exc.detail
    return error(exc.status_code, message, getattr(exc, "headers", None))


async def server_error(request: Any, exc: Exception):
    """A failure outside `predict` (which answers its own): JSON like every other answer; uvicorn logs it."""
    return error(500, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")


def build_app(workers: dict[str, ModelWorker], limits: Limits):
    """The starlette app: routes, their OpenAPI description, and JSON for its own 404 and 405."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route
    from starlette.schemas import SchemaGenerator

    from llmkit import __version__

    routes = [Route("/health", health, methods=["GET"]), Route("/openapi.json", openapi, methods=["GET"],
                                                              include_in_schema=False),
              Route("/", predict, methods=["POST"]), Route("/models/{name:path}", predict, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.workers, app.state.limits = workers, limits
    app.state.schemas = SchemaGenerator({"openapi": "3.0.0", "info": {"title": "llmkit serve",
                                                                      "version": __version__}})
    return app


class Guard:
    """What comes before routing: the bound on connections (503) and the API key (401; GET /health is open)."""

    def __init__(self, app: Any, api_key: str | None, max_connections: int):
        self.app, self.max_connections = app, max_connections
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.connections: Collection = ()  # uvicorn's open connections, set once its server exists

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        await (refusal or self.app)(scope, receive, send)

    def refusal(self, scope: dict) -> Any:
        if len(self.connections) > self.max_connections:
            return error(503, f"the server holds {len(self.connections)} connections, at most "
                              f"{self.max_connections}; retry shortly", {"connection": "close"})
        if self.expected is None or (scope["method"] in ("GET", "HEAD") and scope["path"] == "/health"):
            return None
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            return error(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                         {"www-authenticate": "Bearer"})
        return None


class StrictHTTP:
    """What llmkit's HTTP protocol adds to uvicorn's h11 one (`protocol_class`): a deadline on each request's
    headers, JSON for the 400s it writes itself, and no reading of a body that was answered before it came."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.header_timeout, self.header_timer = header_timeout, None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.watch_headers()

    def watch_headers(self) -> None:
        """A deadline runs while the client owes the headers of a request: from the connection (or the first
        byte after a kept-alive response, before which uvicorn's keep-alive timeout runs) to their end."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self.header_timer is None:
            self.header_timer = self.loop.call_later(self.header_timeout, self.headers_too_slow)
        elif not waiting and self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def headers_too_slow(self) -> None:
        self.header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.conn.trailing_data[0]:  # half a request came; a silent connection is just closed
                self.transport.write(raw_error(408, f"the request headers did not arrive within "
                                                    f"{self.header_timeout:g} s"))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # no answer of ours is half written
            self.transport.write(raw_error(400, "malformed HTTP/1.1 request (request line, headers, "
                                                "Content-Length or chunked framing)"))
        self.transport.close()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:  # answered before the body was read (413, 401, 404, ...):
            self.transport.close()  # the rest is not read, where uvicorn would read and drop it without end
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
        super().connection_lost(exc)


def protocol_class() -> type:
    """uvicorn's h11 protocol with `StrictHTTP`'s rules."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return type("Protocol", (StrictHTTP, H11Protocol), {})


def load_models(models: list[str], device: str | None, precision: str, max_batch: int,
                jobs: "queue.Queue[Job]", runtime: str = "auto") -> dict[str, ModelWorker]:
    """Each model loaded once: masked LMs for fill-mask, sequence classifiers for text-classification, token
    classifiers for token-classification."""
    from llmkit import fillmask, inference

    workers = {}
    for model in models:
        task = inference.model_task(model)
        loaded = fillmask.load(model, device, precision, runtime=runtime) if task == "fill-mask" else \
            inference.load(model, task, device, precision, runtime=runtime)
        name = Path(model).name if Path(model).exists() else model
        if name in workers:
            raise ConfigError(f"Two models are named '{name}'. Give models with different names.")
        workers[name] = ModelWorker(name, task, loaded, max_batch, jobs)
        log(f"serve: /models/{name}: {task}, {loaded.describe()}")
    return workers


def check_access(host: str, api_key: str | None, insecure_no_key: bool) -> None:
    """Beyond localhost a key is required, unless the user says in so many words that none is wanted."""
    if api_key is not None and not re.fullmatch(r"[\x21-\x7e]+", api_key):
        raise ConfigError("--api-key must be printable ASCII without spaces (it travels in an HTTP header).")
    if api_key is None and not insecure_no_key and host not in LOCAL_HOSTS:
        raise ConfigError(f"Expected an API key to listen on {host}: any machine that reaches it could use the "
                          "models. Give --api-key KEY (or set LLMKIT_API_KEY), or pass --insecure-no-key to serve "
                          "without one.")


def listen(host: str, port: int) -> socket.socket:
    """The bound, listening socket (before the models load: a taken port fails at once)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise ConfigError(f"Cannot listen on {host}:{port} ({e.strerror or e}). Choose another --host or "
                          "--port.") from None
    sock.listen(1024)  # the backlog: a burst of connections waits here instead of being reset
    return sock


def http_server(app: Guard, sock: socket.socket, limits: Limits) -> Any:
    import uvicorn

    logger = logging.getLogger("uvicorn")  # uvicorn's warnings and errors, one line each, as llmkit writes them
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("llmkit: serve: %(message)s"))
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.WARNING)
    # On SIGTERM, requests in flight are answered: each has body_timeout to arrive and answer_timeout to be answered.
    config = uvicorn.Config(app, http=functools.partial(protocol_class(), header_timeout=limits.header_timeout),
                            ws="none", lifespan="off", interface="asgi3", log_config=None, access_log=False,
                            timeout_keep_alive=limits.keep_alive_timeout, server_header=False, proxy_headers=False,
                            timeout_graceful_shutdown=limits.body_timeout + limits.answer_timeout, backlog=1024)
    server = uvicorn.Server(config)
    app.connections = server.server_state.connections
    return server


def main(models: list[str], host: str = "127.0.0.1", port: int = 8000, device: str | None = None,
         precision: str = "auto", max_batch: int = 64, api_key: str | None = None, insecure_no_key: bool = False,
         runtime: str = "auto", **limits: float) -> None:
    """Serve until SIGTERM or Ctrl-C. `limits`: the fields of `Limits` (max_request_bytes, header_timeout, ...)."""
    limits = Limits(**limits)
    if not models:
        raise ConfigError("llmkit serve needs at least one model: llmkit serve MODEL [MODEL...]")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}.")
    limits.check()
    check_access(host, api_key or None, insecure_no_key)
    sock = listen(host, port)
    jobs: queue.Queue[Job] = queue.Queue(maxsize=limits.max_queue)
    workers = load_models(models, device, precision, max_batch, jobs, runtime)
    server = http_server(Guard(build_app(workers, limits), api_key or None, limits.max_connections), sock, limits)
    stop = threading.Event()

    def serve_http() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            stop.set()  # the model runner ends once what was queued is answered

    def on_signal(signum: int, frame: Any) -> None:
        server.force_exit = server.should_exit  # a second Ctrl-C stops without waiting
        server.should_exit = True  # no new connections; requests in flight are answered

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    listening = threading.Thread(target=serve_http, name="llmkit-serve-http", daemon=True)
    listening.start()
    shown = f"[{host}]" if ":" in host else host
    log(f"serving {', '.join(workers)} on http://{shown}:{sock.getsockname()[1]} (POST /models/NAME, "
        f"GET /health){'' if api_key else ', no API key'}")
    try:
        run_jobs(jobs, stop)
    finally:
        server.should_exit = True
        listening.join(timeout=60)
        sock.close()
    if not server.started:
        raise RunError("serve: the HTTP server did not start; see the messages above.")
    log("serve: stopped")
