"""Serve a GGUF file over an OpenAI-compatible API, checked and CPU-safe.

The model is loaded by :func:`medlora.export.open_gguf` (llama.cpp's AMX weight repacking
off) and answered through llama-cpp-python's request types and error handler
(``medlora.serve._openai``); requests pass through :class:`RequestValidator` first, which
answers malformed bodies, wrong types, absurd ``max_tokens`` and unknown models with a 4xx
OpenAI-style JSON error instead of a 500 or a silent fallback to the default model.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import attrs

from medlora._config import ConfigBase, integer, positive
from medlora._errors import ModelLoadError
from medlora._optional import require

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CHECKED_PATHS = ("/v1/chat/completions", "/v1/completions")
"""Endpoints whose JSON bodies are validated before llama.cpp sees them."""


def _optional_str(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        from medlora._errors import ConfigError

        raise ConfigError(
            f"{attribute.name} = {value!r} is invalid: use a non-empty string or None.",
            field=attribute.name,
        )


@attrs.frozen(kw_only=True)
class ServeConfig(ConfigBase):
    """How ``medlora serve`` runs a model."""

    host: str = "127.0.0.1"
    """Interface to bind; the default keeps the server private to this machine."""
    port: int = attrs.field(default=8000, validator=[integer, positive])
    """TCP port."""
    api_key: str | None = attrs.field(default=None, validator=_optional_str)
    """When set, every request needs ``Authorization: Bearer <api_key>``."""
    model_alias: str | None = attrs.field(default=None, validator=_optional_str)
    """Model id clients send (default: the file name without ``.gguf``)."""
    n_ctx: int = attrs.field(default=2048, validator=[integer, positive])
    """Context length in tokens (prompt + completion)."""
    n_threads: int | None = None
    """CPU threads for llama.cpp, for generation and prompt processing alike (default:
    llama-cpp-python's choice, half the CPUs and all of them)."""

    def alias_for(self, model: Path) -> str:
        """The model id served for ``model``."""
        return self.model_alias or model.name.removesuffix(".gguf")


def _error(status: int, message: str, *, param: str | None, code: str) -> tuple[int, bytes]:
    kind = "invalid_request_error" if status != 404 else "not_found_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return status, json.dumps(body).encode()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_request(
    path: str, raw: bytes, *, models: tuple[str, ...], max_tokens: int
) -> tuple[int, bytes] | None:
    """Check one request body; ``None`` if it may pass, else ``(status, JSON error body)``.

    Args:
        path: The endpoint: ``/v1/chat/completions`` or ``/v1/completions``.
        raw: The request body.
        models: Model ids the server knows.
        max_tokens: The largest ``max_tokens`` accepted (the context length).
    """
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"request body is not valid JSON: {exc}", param=None, code="bad_json")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object", param=None, code="bad_type")
    problems: list[tuple[str, str]] = []
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        problems.append(("model", "must be a string"))
    tokens = body.get("max_tokens")
    if tokens is not None:
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            problems.append(("max_tokens", "must be an integer"))
        elif not 1 <= tokens <= max_tokens:
            problems.append(("max_tokens", f"must lie between 1 and {max_tokens} (the context)"))
    for key, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = body.get(key)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            problems.append((key, f"must be a number between {low} and {high}"))
    if "stream" in body and not isinstance(body["stream"], bool):
        problems.append(("stream", "must be true or false"))
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        problems.append(("stop", "must be a string or a list of strings"))
    if path.endswith("/chat/completions"):
        problems.extend(_message_problems(body.get("messages")))
    else:
        prompt = body.get("prompt")
        if not (
            isinstance(prompt, str)
            or (
                isinstance(prompt, list)
                and len(prompt) <= 1
                and all(isinstance(p, str) for p in prompt)
            )
        ):
            problems.append(("prompt", "must be a string (or a list of one string)"))
    if problems:
        param = problems[0][0]
        message = "; ".join(f"{p} {w}" for p, w in problems)
        return _error(400, message, param=param, code="invalid_value")
    if model is not None and model not in models:
        return _error(
            404,
            f"model {model!r} does not exist; this server has {', '.join(models)}",
            param="model",
            code="model_not_found",
        )
    return None


def _message_problems(messages: Any) -> list[tuple[str, str]]:
    if not isinstance(messages, list) or not messages:
        return [("messages", "must be a non-empty list of {role, content} objects")]
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return [(where, "must be an object with role and content")]
        if message.get("role") not in ("system", "user", "assistant", "tool", "function"):
            return [(f"{where}.role", "must be system, user, assistant or tool")]
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            return [(f"{where}.content", "must be a string")]
    return []


@attrs.define
class RequestValidator:
    """ASGI wrapper: validates completion requests, passes everything else through."""

    app: ASGIApp
    """The wrapped ASGI app (llama-cpp-python's FastAPI app)."""
    models: tuple[str, ...]
    """Model ids the server knows."""
    max_tokens: int
    """The largest ``max_tokens`` accepted."""
    api_key: str | None = None
    """When set, requests without ``Bearer <api_key>`` are refused before validation."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") not in CHECKED_PATHS
            or not self._authorized(scope)  # the app itself answers 401
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        raw = b"".join(chunks)
        failure = validate_request(
            scope["path"], raw, models=self.models, max_tokens=self.max_tokens
        )
        if failure is not None:
            status, body = failure
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _authorized(self, scope: Scope) -> bool:
        if self.api_key is None:
            return True
        headers = dict(scope.get("headers") or [])
        given: bytes = headers.get(b"authorization", b"")
        return given == f"Bearer {self.api_key}".encode()


def create_gguf_app(model: str | Path, config: ServeConfig | None = None) -> ASGIApp:
    """An OpenAI-compatible ASGI app for ``model`` (what ``medlora serve`` runs), wrapped in
    request checks (:func:`validate_request`).

    The chat template comes from the file (``tokenizer.chat_template``); the model is loaded
    once, by :func:`medlora.export.open_gguf` (llama.cpp's AMX repacking off), and freed when
    the app shuts down.

    Raises:
        ModelLoadError: The file is missing or llama.cpp cannot load it.
        MissingDependencyError: llama-cpp-python's ``server`` extra is not installed.
    """
    config = config or ServeConfig()
    model = Path(model)
    if not model.is_file():
        raise ModelLoadError(f"{model} does not exist; pass a .gguf file")
    for module in ("fastapi", "sse_starlette", "llama_cpp.server.types"):
        require(module, "medlora serve (llama-cpp-python[server])")
    from medlora.export import open_gguf
    from medlora.serve._openai import openai_app

    alias = config.alias_for(model)
    # logits_all: every position's logits, for requests that ask for logprobs (as
    # llama-cpp-python's own server loads its models)
    llm = open_gguf(model, n_ctx=config.n_ctx, n_threads=config.n_threads, logits_all=True)
    app = openai_app(llm, alias=alias, api_key=config.api_key)
    return RequestValidator(
        app=app, models=(alias,), max_tokens=config.n_ctx, api_key=config.api_key
    )


@contextlib.contextmanager
def _graceful_signals(server: Any) -> Iterator[None]:
    """SIGINT/SIGTERM end the server gracefully, and the process then exits normally.

    uvicorn's own handler re-raises the signal after shutting down, so the process would die
    by it (exit status -15) before the model is freed; this one only asks uvicorn to stop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(sig: int, _frame: Any) -> None:
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True  # a second Ctrl-C skips the wait for open requests
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _graceful_server(uvicorn: Any) -> Any:
    """A ``uvicorn.Server`` whose signal handling is :func:`_graceful_signals` (uvicorn's own
    hook, ``capture_signals``, overridden in a subclass)."""

    class GracefulServer(uvicorn.Server):  # type: ignore[misc, name-defined]
        def capture_signals(self) -> Any:
            return _graceful_signals(self)

    return GracefulServer


def serve_gguf(model: str | Path, config: ServeConfig | None = None) -> None:
    """Run the server until SIGINT or SIGTERM, then finish open requests and free the model."""
    config = config or ServeConfig()
    uvicorn = require("uvicorn", "medlora serve (llama-cpp-python[server])")
    app = create_gguf_app(model, config)
    server = _graceful_server(uvicorn)(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            timeout_graceful_shutdown=10,
        )
    )
    print(
        f"serving {config.alias_for(Path(model))} on http://{config.host}:{config.port}/v1 "
        "(OpenAI-compatible; Ctrl-C to stop)",
        flush=True,
    )
    server.run()  # SIGINT/SIGTERM: stop accepting, let open requests finish, free the model
    print("server stopped", flush=True)
