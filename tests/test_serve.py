"""`llmkit serve` over real HTTP on localhost: fill-mask and classification in the inference API's shapes, lists of
inputs, concurrent clients batched, bad requests answered with a 4xx and one JSON line, and a clean SIGTERM; then
abuse over raw sockets: every framing of a body (Content-Length malformed, negative, huge or missing; chunked),
deep JSON, huge texts, stalled and departed clients, full queues and connection bounds, and the API key."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import OFFLINE, run_cli
from tests.test_predict import TEXTS, make_classifier

pytestmark = pytest.mark.slow

KEY = "s3cret-key"


def start_server(*args: str) -> tuple[subprocess.Popen, int, list[str]]:
    """(process, port, its stderr lines so far and to come): `llmkit serve ARGS --port 0`, once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", *map(str, args), "--port", "0", "--device",
                             "cpu", "--precision", "fp32"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **OFFLINE})
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        found = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if found:
            break
    else:
        pytest.fail("the server did not start:\n" + "".join(lines))
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # drained: it never blocks
    return proc, int(found.group(1)), lines


@pytest.fixture(scope="module")
def server(tiny_mlm, tmp_path_factory):
    classifier = make_classifier(tmp_path_factory.mktemp("serve") / "clf", tiny_mlm)
    proc, port, lines = start_server(tiny_mlm, classifier, "--max-request-bytes", "20000")
    proc.lines = lines
    yield f"http://127.0.0.1:{port}", proc, tiny_mlm.name, classifier.name
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def strict(tiny_mlm):
    """A server with a key, a large body limit, short timeouts, few connections, a short queue and one text per
    forward pass (so a request of many texts keeps the model busy)."""
    proc, port, lines = start_server(tiny_mlm, "--api-key", KEY, "--max-request-bytes", "3000000",
                                     "--max-connections", "8", "--max-queue", "2", "--max-batch", "1",
                                     "--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1")
    yield port, proc, lines, tiny_mlm.name
    if proc.poll() is None:
        proc.kill()


def post(url: str, payload, raw: bytes | None = None, key: str | None = None):
    data = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def exchange(port: int, data: bytes, timeout: float = 20) -> tuple[int, dict]:
    """Raw bytes sent as they are; (status, JSON body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def request_head(path: str, *headers: str, key: str | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", *headers] + ([f"Authorization: Bearer {key}"] if key else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(body: bytes, size: int = 4096) -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def assert_one_json_line(body: dict, phrase: str = "") -> None:
    assert list(body) == ["error"] and phrase in body["error"] and "\n" not in body["error"], body


def healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        return response.status == 200


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_fill_mask_in_the_inference_api_shape(server, tiny_mlm):
    from llmkit import fillmask

    url, _, mlm, _ = server
    status, body = post(f"{url}/models/{mlm}", {"inputs": "alpha beta [MASK] delta", "parameters": {"top_k": 3}})
    assert status == 200 and len(body) == 3 and set(body[0]) == {"score", "token", "token_str", "sequence"}
    [expected] = fillmask.fill_mask(tiny_mlm, "alpha beta [MASK] delta", top_k=3, device="cpu", precision="fp32")
    assert [c["token_str"] for c in body] == [c["token"] for c in expected["masks"][0]["candidates"]]
    status, many = post(url, {"inputs": ["alpha [MASK] gamma", "beta [MASK]"]})  # POST / is the first model
    assert status == 200 and len(many) == 2 and len(many[0]) == 5
    status, targeted = post(f"{url}/models/{mlm}", {"inputs": "alpha [MASK]", "parameters": {"targets": ["beta"]}})
    assert status == 200 and [c["token_str"] for c in targeted] == ["beta"]


def test_classification_in_the_inference_api_shape(server):
    url, _, _, clf = server
    status, [body] = post(f"{url}/models/{clf}", {"inputs": TEXTS[0]})  # one ranking per text, as the API answers
    assert status == 200 and [set(r) for r in body] == [{"label", "score"}] * 2
    assert body[0]["score"] >= body[1]["score"] and abs(sum(r["score"] for r in body) - 1) < 1e-4
    status, many = post(f"{url}/models/{clf}", {"inputs": TEXTS, "parameters": {"top_k": 1}})
    assert status == 200 and len(many) == len(TEXTS) and all(len(r) == 1 for r in many)


def test_concurrent_clients_get_their_own_answers(server):
    url, _, mlm, clf = server
    texts = [f"{w} [MASK] delta" for w in ("alpha", "beta", "gamma", "epsilon")] * 5
    sequential = [post(f"{url}/models/{mlm}", {"inputs": t})[1] for t in texts]
    results: dict[int, object] = {}

    def client(i: int) -> None:
        results[i] = post(f"{url}/models/{mlm}", {"inputs": texts[i]})[1]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(sequential):  # batched together, answered apart
        assert [c["token"] for c in results[i]] == [c["token"] for c in expected]
        assert [c["score"] for c in results[i]] == pytest.approx([c["score"] for c in expected], abs=1e-5)


def test_a_burst_of_connections_is_answered(server):
    url, _, mlm, _ = server
    clients = 64
    start = threading.Barrier(clients)
    statuses: list[int] = []

    def client() -> None:
        start.wait()  # every client connects at once
        statuses.append(post(f"{url}/models/{mlm}", {"inputs": "alpha [MASK] delta"})[0])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * clients


@pytest.mark.parametrize("path, payload, raw, status, phrase", [
    ("/models/{mlm}", None, b"{not json", 400, "not JSON"),
    ("/models/{mlm}", {"text": "x"}, None, 400, '"inputs"'),
    ("/models/{mlm}", {"inputs": "no mask here"}, None, 422, "no mask token"),
    ("/models/{mlm}", {"inputs": "a [MASK]", "parameters": {"top_k": 0}}, None, 400, "top_k"),
    ("/models/{mlm}", {"inputs": "a [MASK]", "parameters": {"temperature": 1}}, None, 400, "unknown parameter"),
    ("/models/{mlm}", {"inputs": "x " * 20000}, None, 413, "at most 20,000"),
    ("/models/nope", {"inputs": "a [MASK]"}, None, 404, "no model"),
])
def test_bad_requests_get_a_4xx_with_one_json_line(server, path, payload, raw, status, phrase):
    url, proc, mlm, _ = server
    code, body = post(url + path.format(mlm=mlm), payload, raw)
    assert code == status and list(body) == ["error"] and phrase in body["error"] and "\n" not in body["error"]
    assert proc.poll() is None  # still serving
    assert post(f"{url}/models/{mlm}", {"inputs": "a [MASK]"})[0] == 200


LIMIT_PHRASE = "at most 20,000"


@pytest.mark.parametrize("headers, body, statuses, phrase", [
    (["Content-Length: abc"], b"", (400,), "malformed"),
    (["Content-Length: -5"], b"", (400,), "malformed"),
    (["Content-Length: 1000000000000"], b"", (413,), LIMIT_PHRASE),  # refused before a byte of it is read
    (["Content-Length: " + "9" * 40], b"", (400, 413), ""),
    ([], b"", (400,), "not JSON"),  # no Content-Length: no body
    (["Transfer-Encoding: chunked"], chunked(b'{"inputs": "alpha [MASK] gamma"}', 8), (200,), ""),
    (["Transfer-Encoding: chunked"], chunked(b'{"inputs": "' + b"x " * 15000 + b'"}'), (413,), LIMIT_PHRASE),
    (["Transfer-Encoding: chunked"], b"zz\r\nnot a chunk\r\n", (400,), "malformed"),
    (["Transfer-Encoding: gzip"], b"", (400,), "malformed"),
])
def test_every_framing_of_a_body_is_bounded(server, headers, body, statuses, phrase):
    url, _, mlm, _ = server
    status, answer = exchange(port_of(url), request_head(f"/models/{mlm}", *headers) + body)
    assert status in statuses, answer
    if status != 200:
        assert_one_json_line(answer, phrase)
    assert healthy(port_of(url))


def test_stalled_clients_do_not_hold_up_others(server):
    url, _, mlm, _ = server
    port, stalled = port_of(url), []
    try:
        for i in range(300):  # half of them stop inside the headers, half inside the body
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request_head(f"/models/{mlm}", "Content-Length: 100")[:30] if i % 2 else
                         request_head(f"/models/{mlm}", "Content-Length: 100") + b'{"inputs": "alp')
            stalled.append(sock)
        start = time.perf_counter()
        status, answer = post(f"{url}/models/{mlm}", {"inputs": "alpha [MASK] gamma"})
        assert status == 200 and len(answer) == 5 and time.perf_counter() - start < 1.0
    finally:
        for sock in stalled:
            sock.close()
    assert healthy(port)


def test_inference_client_against_the_server(server, strict, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # a local URL; HF_HUB_OFFLINE refuses every URL
    url, _, _, clf = server
    [top] = InferenceClient(base_url=f"{url}/models/{clf}").text_classification(TEXTS[0], top_k=1)
    assert top.label in ("neg", "pos") and 0 < top.score <= 1
    assert len(InferenceClient(base_url=f"{url}/models/{clf}").text_classification(TEXTS[0])) == 2
    port, _, _, mlm = strict
    filled = InferenceClient(base_url=f"http://127.0.0.1:{port}/models/{mlm}", api_key=KEY).fill_mask(
        "alpha [MASK] gamma", top_k=2)
    assert len(filled) == 2 and all(c.token_str and 0 < c.score < 1 for c in filled)


def test_health_and_clean_shutdown_on_sigterm(server):
    url, proc, mlm, clf = server
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok", "models": {mlm: "fill-mask",
                                                                          clf: "text-classification"}}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    time.sleep(0.2)  # the drain thread reads the last lines
    assert "llmkit: serve: stopped\n" in proc.lines


def test_a_key_is_needed_for_everything_but_health(strict):
    port, _, _, mlm = strict
    url = f"http://127.0.0.1:{port}"
    for key in (None, "wrong"):
        status, body = post(f"{url}/models/{mlm}", {"inputs": "alpha [MASK]"}, key=key)
        assert status == 401 and "Authorization: Bearer" in body["error"]
        assert_one_json_line(body)
    assert post(f"{url}/models/{mlm}", {"inputs": "alpha [MASK]"}, key=KEY)[0] == 200
    assert healthy(port)
    request = urllib.request.Request(f"{url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        schema = json.loads(response.read())
    assert {"/health", "/", "/models/{name}"} <= set(schema["paths"]) and "post" in schema["paths"]["/"]


def test_other_hosts_are_refused_without_a_key(tiny_mlm):
    result = run_cli("serve", tiny_mlm, "--host", "0.0.0.0", "--port", "0", timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "0.0.0.0" in line and "--api-key" in line and "--insecure-no-key" in line


def test_deep_json_and_huge_texts_are_answered_cleanly(strict):
    port, _, _, mlm = strict
    status, body = post(f"http://127.0.0.1:{port}/models/{mlm}", None, raw=b"[" * 100000, key=KEY)
    assert status == 400 and "deeply" in body["error"]
    huge = "alpha " * 200000 + "[MASK]"  # 1.2 MB, within this server's limit; far beyond the model's window
    status, body = post(f"http://127.0.0.1:{port}/models/{mlm}", {"inputs": huge}, key=KEY)
    assert (status == 200 and len(body) == 5) or (400 <= status < 500 and list(body) == ["error"])
    assert healthy(port)


def closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """(what the server sent before closing, seconds it took) on a connection the client stops using."""
    start, received = time.perf_counter(), b""
    sock.settimeout(seconds)
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.perf_counter() - start


def test_half_sent_requests_and_idle_connections_are_dropped(strict):
    port, _, _, mlm = strict
    head = request_head(f"/models/{mlm}", "Content-Length: 100", key=KEY)
    for sent, phrase in ((head[:40], "headers"), (head + b'{"inputs": "al', "body"), (b"", "")):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(sent)
            received, seconds = closed_within(sock, 5)
        assert 0.8 < seconds < 3
        assert (b" 408 " in received and phrase.encode() in received) if phrase else received == b""
    with socket.create_connection(("127.0.0.1", port)) as sock:  # kept alive after an answer, then idle
        body = json.dumps({"inputs": "alpha [MASK]"}).encode()
        sock.sendall(request_head(f"/models/{mlm}", f"Content-Length: {len(body)}", key=KEY) + body)
        received, seconds = closed_within(sock, 5)
    assert received.startswith(b"HTTP/1.1 200") and 0.8 < seconds < 3
    assert healthy(port)


def test_connections_beyond_the_bound_get_503(strict):
    port, _, _, mlm = strict
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        time.sleep(0.2)  # accepted by the server
        status, body = post(f"http://127.0.0.1:{port}/models/{mlm}", {"inputs": "alpha [MASK]"}, key=KEY)
        assert status == 503 and "connections" in body["error"]
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert post(f"http://127.0.0.1:{port}/models/{mlm}", {"inputs": "alpha [MASK]"}, key=KEY)[0] == 200


def keep_busy(port: int, mlm: str) -> tuple[threading.Thread, list]:
    """A request of 256 texts of 20 masks each, a second or more of work for a server with --max-batch 1."""
    answers: list = []
    texts = ["alpha beta gamma delta [MASK] " * 20] * 256
    thread = threading.Thread(target=lambda: answers.append(
        post(f"http://127.0.0.1:{port}/models/{mlm}", {"inputs": texts}, key=KEY)))
    thread.start()
    time.sleep(0.3)  # taken by the model runner
    return thread, answers


def test_a_full_queue_is_answered_503_at_once(strict):
    port, _, _, mlm = strict
    busy, answers = keep_busy(port, mlm)
    replies: list = []

    def client() -> None:
        start = time.perf_counter()
        status, body = post(f"http://127.0.0.1:{port}/models/{mlm}", {"inputs": "alpha [MASK]"}, key=KEY)
        replies.append((status, body, time.perf_counter() - start))

    clients = [threading.Thread(target=client) for _ in range(5)]
    for t in clients:
        t.start()
    for t in clients + [busy]:
        t.join()
    refused = [(body, seconds) for status, body, seconds in replies if status == 503]
    assert answers[0][0] == 200 and sorted(r[0] for r in replies) == [200] * (5 - len(refused)) + [503] * len(refused)
    assert len(refused) >= 2 and all("busy" in body["error"] and seconds < 0.5 for body, seconds in refused)


def test_requests_whose_client_left_are_not_run(strict):
    port, _, lines, mlm = strict
    busy, answers = keep_busy(port, mlm)
    body = json.dumps({"inputs": "alpha [MASK]"}).encode()
    for _ in range(2):  # sent whole, then the client goes away before the answer
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request_head(f"/models/{mlm}", f"Content-Length: {len(body)}", key=KEY) + body)
            time.sleep(0.1)
    busy.join()
    assert answers[0][0] == 200
    skipped = lambda: sum(int(n) for n in re.findall(r"skipped (\d+) request\(s\) whose client left", "".join(lines)))
    deadline = time.monotonic() + 10
    while skipped() < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert skipped() == 2, "".join(lines)
    assert healthy(port)


def test_the_model_runner_skips_cancelled_jobs(monkeypatch):
    import queue

    from llmkit import serve

    calls: list = []
    monkeypatch.setattr(serve, "answer", lambda task, loaded, texts, parameters: calls.append(texts) or texts)
    jobs: queue.Queue = queue.Queue()
    worker, settled = serve.ModelWorker("m", "fill-mask", None, 8, jobs), {}
    for text, cancelled in (("a", False), ("b", True), ("c", False)):
        jobs.put(serve.Job(worker, [text], {}, lambda result, error, t=text: settled.update({t: result}), cancelled))
    stop = threading.Event()
    stop.set()  # answer what is queued, then return
    serve.run_jobs(jobs, stop)
    assert calls == [["a", "c"]] and settled == {"a": ["a"], "c": ["c"]}


def test_sigterm_answers_requests_in_flight_first(strict):
    port, proc, lines, mlm = strict
    busy, answers = keep_busy(port, mlm)
    proc.send_signal(signal.SIGTERM)
    busy.join()
    assert answers[0][0] == 200 and len(answers[0][1]) == 256
    assert proc.wait(timeout=30) == 0
    time.sleep(0.2)
    assert "llmkit: serve: stopped\n" in lines
