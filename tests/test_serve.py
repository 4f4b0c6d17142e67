"""`llmkit serve` over real HTTP on localhost: fill-mask and classification in the inference API's shapes, lists of
inputs, concurrent clients batched, bad requests answered with a 4xx and one JSON line, and a clean SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from tests.conftest import OFFLINE
from tests.test_predict import TEXTS, make_classifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_mlm, tmp_path_factory):
    classifier = make_classifier(tmp_path_factory.mktemp("serve") / "clf", tiny_mlm)
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", str(tiny_mlm), str(classifier), "--port", "0",
                             "--device", "cpu", "--precision", "fp32", "--max-request-bytes", "20000"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **OFFLINE})
    for line in proc.stderr:
        found = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if found:
            break
    else:
        pytest.fail("the server did not start")
    yield f"http://127.0.0.1:{found.group(1)}", proc, tiny_mlm.name, classifier.name
    if proc.poll() is None:
        proc.kill()


def post(url: str, payload, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


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
    from llmkit import inference

    url, _, _, clf = server
    status, body = post(f"{url}/models/{clf}", {"inputs": TEXTS[0]})
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


def test_health_and_clean_shutdown_on_sigterm(server):
    url, proc, mlm, clf = server
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok", "models": {mlm: "fill-mask",
                                                                          clf: "text-classification"}}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "serve: stopped" in proc.stderr.read()
