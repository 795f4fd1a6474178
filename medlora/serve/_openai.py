"""The OpenAI-compatible app ``medlora serve`` runs: one llama.cpp model, loaded by medlora.

llama-cpp-python's own app (``llama_cpp.server.app.create_app``) builds its ``Llama`` itself
and takes neither a model nor a class to build it with, so it cannot load the model with
llama.cpp's AMX weight repacking off (:func:`medlora.export.open_gguf`) short of patching it.
This app serves the model ``open_gguf`` loaded, through llama-cpp-python's own request types
and error handler (its supported parts): the same endpoints (``/v1/models``,
``/v1/chat/completions``, ``/v1/completions``), request fields, responses, and streams of
server-sent events ending in ``data: [DONE]``. Imported only when a server starts.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import llama_cpp
from fastapi import APIRouter, Depends, FastAPI, HTTPException, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from llama_cpp.server.errors import RouteErrorHandler
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

NOT_PASSED = frozenset({"n", "best_of", "logit_bias_type", "user", "min_tokens"})
"""Request fields that are not ``Llama`` keywords (llama-cpp-python's server leaves them out
too; ``logit_bias_type`` and ``min_tokens`` become ``logit_bias`` and a logits processor)."""


def openai_app(llm: Any, *, alias: str, api_key: str | None = None) -> FastAPI:
    """A FastAPI app answering OpenAI requests with ``llm`` (a ``llama_cpp.Llama``), which
    it closes when the app shuts down.

    One request runs on the model at a time; the next waits, and a running stream is never
    cut short. With ``api_key`` set every endpoint needs ``Authorization: Bearer <api_key>``.
    """
    # Taken in the worker threads: with an anyio lock around the worker call instead, 8
    # clients x 50 requests took 7.7-17.3 s rather than 0.9-1.3 s on 2 busy cores (tiny Q8_0
    # model; llama-cpp-python's own server: 1.1 s).
    lock = threading.Lock()
    bearer = HTTPBearer(auto_error=False)

    async def authenticate(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if api_key is not None and (credentials is None or credentials.credentials != api_key):
            raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Invalid API key")

    router = APIRouter(route_class=RouteErrorHandler, dependencies=[Depends(authenticate)])

    async def answer(call: Callable[..., Any], body: Any) -> Any:
        kwargs = _llama_keywords(llm, body)
        if kwargs.get("stream"):
            return EventSourceResponse(_events(lock, call, kwargs), sep="\n")
        return await run_in_threadpool(_locked, lock, call, kwargs)

    @router.get("/v1/models", response_model=None)
    async def models() -> dict[str, Any]:
        card = {"id": alias, "object": "model", "owned_by": "me", "permissions": []}
        return {"object": "list", "data": [card]}

    # llama-cpp-python's response types: pydantic turns numpy floats (logprobs) into JSON
    @router.post("/v1/completions", response_model=llama_cpp.CreateCompletionResponse | str)
    async def completions(body: CreateCompletionRequest) -> Any:
        if isinstance(body.prompt, list):
            body.prompt = body.prompt[0] if body.prompt else ""
        return await answer(llm.create_completion, body)

    @router.post("/v1/chat/completions", response_model=llama_cpp.ChatCompletion | str)
    async def chat_completions(body: CreateChatCompletionRequest) -> Any:
        return await answer(llm.create_chat_completion, body)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        llm.close()

    app = FastAPI(title="medlora serve", lifespan=lifespan)
    app.state.llm = llm  # the served model, for whoever holds the app
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    app.include_router(router)
    return app


def _llama_keywords(llm: Any, body: Any) -> dict[str, Any]:
    """The ``create_completion``/``create_chat_completion`` keywords of a request, as
    llama-cpp-python's server derives them."""
    kwargs: dict[str, Any] = body.model_dump(exclude=NOT_PASSED)
    if body.logit_bias is not None:
        kwargs["logit_bias"] = (
            _token_bias(llm, body.logit_bias)
            if body.logit_bias_type == "tokens"
            else body.logit_bias
        )
    if body.grammar is not None:
        kwargs["grammar"] = llama_cpp.LlamaGrammar.from_string(body.grammar)
    if body.min_tokens > 0:
        processor = llama_cpp.MinTokensLogitsProcessor(body.min_tokens, llm.token_eos())
        kwargs["logits_processor"] = llama_cpp.LogitsProcessorList([processor])
    return kwargs


def _token_bias(llm: Any, bias: dict[str, float]) -> dict[str, float]:
    """``logit_bias`` keyed by token text, keyed by the ids those texts tokenize to."""
    out: dict[str, float] = {}
    for text, score in bias.items():
        for token in llm.tokenize(text.encode("utf-8"), add_bos=False, special=True):
            out[str(token)] = score
    return out


def _locked(lock: threading.Lock, call: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """``call(**kwargs)`` holding the model (in a worker thread)."""
    with lock:
        return call(**kwargs)


async def _events(
    lock: threading.Lock, call: Callable[..., Any], kwargs: dict[str, Any]
) -> AsyncIterator[dict[str, str]]:
    """A streamed reply as server-sent events, holding the model until it ends or the client
    goes (a worker thread takes the lock; a cancelled wait for it still ends holding it, so
    it is released here either way)."""
    held: list[bool] = []

    def take() -> None:
        lock.acquire()
        held.append(True)

    try:
        await run_in_threadpool(take)
        chunks = await run_in_threadpool(call, **kwargs)
        async for chunk in iterate_in_threadpool(chunks):
            yield {"data": json.dumps(chunk)}
        yield {"data": "[DONE]"}
    finally:
        if held:
            lock.release()
