"""``medlora serve`` over real HTTP on loopback: endpoints, load, bad input, the openai client."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from typing import Any

import pytest
from serve_helpers import Server, http, pick_port, serve_argv

from medlora.serve import ServeConfig, create_gguf_app, validate_request

CHAT = {"model": "clinical-tiny", "messages": [{"role": "user", "content": "What is sepsis?"}]}


def test_models_endpoint_lists_the_alias(server: Server) -> None:
    status, body = http("GET", f"{server.url}/v1/models")
    assert status == 200
    assert [m["id"] for m in body["data"]] == ["clinical-tiny"]


def test_chat_completion(server: Server) -> None:
    status, body = http("POST", f"{server.url}/v1/chat/completions", {**CHAT, "max_tokens": 16})
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 16


def test_chat_completion_streams_server_sent_events(server: Server) -> None:
    request = urllib.request.Request(
        f"{server.url}/v1/chat/completions",
        data=json.dumps({**CHAT, "max_tokens": 12, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    chunks, done = [], False
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for _ in range(200):  # bounded: 12 tokens + role + finish chunks
            line = response.readline().decode().strip()
            if not line:
                if response.fp is None:
                    break
                continue
            assert line.startswith("data: ")
            if line == "data: [DONE]":
                done = True
                break
            chunks.append(json.loads(line[len("data: ") :]))
    assert done
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_text_completion(server: Server) -> None:
    body = {"model": "clinical-tiny", "prompt": "Pneumonia is", "max_tokens": 8}
    status, reply = http("POST", f"{server.url}/v1/completions", body)
    assert status == 200, reply
    assert isinstance(reply["choices"][0]["text"], str)
    assert 0 < reply["usage"]["completion_tokens"] <= 8


def test_eight_clients_fifty_requests_each_without_errors(server: Server) -> None:
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def client(worker: int) -> None:
        for i in range(50):
            body = {
                **CHAT,
                "max_tokens": 4,
                "messages": [{"role": "user", "content": f"Patient {worker}-{i}: what is sepsis?"}],
            }
            try:
                status, reply = http("POST", f"{server.url}/v1/chat/completions", body)
                ok = status == 200 and reply["choices"][0]["message"]["role"] == "assistant"
            except Exception as exc:  # any transport failure counts as an error
                ok, status = False, repr(exc)
            with lock:
                done[0] += 1
                if not ok:
                    errors.append(f"worker {worker} request {i}: {status}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    seconds = time.perf_counter() - started
    print(
        f"\n8 clients x 50 requests: {done[0]} done in {seconds:.1f} s "
        f"({done[0] / seconds:.1f} req/s), {len(errors)} errors"
    )
    assert done[0] == 400
    assert errors == []


BAD_REQUESTS = [
    ("malformed JSON", "/v1/chat/completions", b'{"messages": [', 400, None),
    ("body not an object", "/v1/chat/completions", b"[1, 2]", 400, None),
    (
        "max_tokens a string",
        "/v1/chat/completions",
        {**CHAT, "max_tokens": "ten"},
        400,
        "max_tokens",
    ),
    ("messages a string", "/v1/chat/completions", {**CHAT, "messages": "hi"}, 400, "messages"),
    (
        "temperature a list",
        "/v1/completions",
        {"prompt": "x", "temperature": [1]},
        400,
        "temperature",
    ),
    ("prompt a number", "/v1/completions", {"prompt": 42}, 400, "prompt"),
    ("absurd max_tokens", "/v1/chat/completions", {**CHAT, "max_tokens": 10**9}, 400, "max_tokens"),
    (
        "negative max_tokens",
        "/v1/completions",
        {"prompt": "x", "max_tokens": -5},
        400,
        "max_tokens",
    ),
    ("unknown model", "/v1/chat/completions", {**CHAT, "model": "gpt-17"}, 404, "model"),
]


@pytest.mark.parametrize(
    ("what", "path", "payload", "status", "param"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(
    server: Server, what: str, path: str, payload: Any, status: int, param: str | None
) -> None:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    got, body = http("POST", f"{server.url}{path}", raw=raw)
    assert got == status, (what, body)
    assert isinstance(body, dict) and body["error"]["message"], body
    assert body["error"]["param"] == param
    ok, reply = http("POST", f"{server.url}/v1/chat/completions", {**CHAT, "max_tokens": 2})
    assert ok == 200, reply


def test_validator_accepts_what_openai_clients_send() -> None:
    ok = {**CHAT, "max_tokens": 8, "temperature": 0, "top_p": 1.0, "stream": False, "stop": ["\n"]}
    assert (
        validate_request(
            "/v1/chat/completions",
            json.dumps(ok).encode(),
            models=("clinical-tiny",),
            max_tokens=512,
        )
        is None
    )
    no_model = {"prompt": ["one prompt"], "max_tokens": 512}
    assert (
        validate_request(
            "/v1/completions",
            json.dumps(no_model).encode(),
            models=("clinical-tiny",),
            max_tokens=512,
        )
        is None
    )
    status, _ = validate_request(
        "/v1/completions", b'{"prompt": "x", "max_tokens": true}', models=("m",), max_tokens=512
    ) or (0, b"")
    assert status == 400  # a bool is not an integer


def test_the_openai_client_as_an_application_would_use_it(server: Server) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0)
    assert [m.id for m in client.models.list()] == ["clinical-tiny"]
    reply = client.chat.completions.create(
        model="clinical-tiny",
        messages=[
            {"role": "system", "content": "You are a careful clinical assistant."},
            {"role": "user", "content": "List red flags of headache."},
        ],
        max_tokens=16,
        temperature=0,
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens <= 16
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="clinical-tiny", messages=CHAT["messages"], max_tokens=8, stream=True
        )
        if chunk.choices
    ]
    assert "".join(pieces)
    completion = client.completions.create(model="clinical-tiny", prompt="Asthma", max_tokens=4)
    assert isinstance(completion.choices[0].text, str)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT["messages"], max_tokens=2)


def test_api_key_and_graceful_shutdown_on_sigint(exported: Any) -> None:
    port = pick_port()
    srv = Server(serve_argv(exported.gguf_files["Q8_0"], port, "--api-key", "s3cret"), port)
    try:
        srv.wait_ready()
        status, body = http("GET", f"{srv.url}/v1/models")
        assert status == 401, body
        status, body = http("POST", f"{srv.url}/v1/chat/completions", {**CHAT, "model": None})
        assert status == 401, body
        auth = {"Authorization": "Bearer s3cret"}
        status, body = http("GET", f"{srv.url}/v1/models", headers=auth)
        assert status == 200 and body["data"][0]["id"] == exported.gguf_files["Q8_0"].stem
        payload = {"messages": CHAT["messages"], "max_tokens": 2}
        status, _ = http("POST", f"{srv.url}/v1/chat/completions", payload, headers=auth)
        assert status == 200
    finally:
        code, out = srv.stop(signal.SIGINT)
    assert code == 0, out
    assert "server stopped" in out


def test_the_served_model_keeps_its_weights_in_plain_buffers(exported: Any) -> None:
    """``create_gguf_app`` serves a model ``open_gguf`` loaded, without llama.cpp's extra
    (AMX) buffer types that llama.cpp turns on by default, and no patch of llama-cpp-python."""
    from starlette.testclient import TestClient

    config = ServeConfig(model_alias="m", n_threads=1)
    app = create_gguf_app(exported.gguf_files["Q8_0"], config)
    llm = app.app.state.llm  # type: ignore[attr-defined]
    assert llm.model_params.use_extra_bufts is False
    with TestClient(app) as client:
        reply = client.post("/v1/chat/completions", json={**CHAT, "model": "m", "max_tokens": 3})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["role"] == "assistant"
        assert client.post("/v1/completions", json={"prompt": "Asthma"}).status_code == 200
        # logprobs need every position's logits, which the served model keeps
        scored = client.post("/v1/completions", json={"prompt": "Asthma", "logprobs": 2})
        assert scored.status_code == 200, scored.text
        assert len(scored.json()["choices"][0]["logprobs"]["top_logprobs"][0]) == 2


def test_a_client_leaving_mid_stream_frees_the_model_for_the_next(server: Server) -> None:
    body = json.dumps({**CHAT, "max_tokens": 64, "stream": True}).encode()
    request = urllib.request.Request(
        f"{server.url}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.readline().startswith(b"data: ")  # then hang up mid-stream
    status, reply = http("POST", f"{server.url}/v1/chat/completions", {**CHAT, "max_tokens": 2})
    assert status == 200, reply
