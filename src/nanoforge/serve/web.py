"""`nanoforge web`: the chat page and an OpenAI-compatible API over the inference engine.

Routes: `GET /` (the page), `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` (stream true or false;
streaming is Server-Sent Events, `data: {chunk}` lines ending with `data: [DONE]`, as the official clients expect).
Every bad request gets a 4xx with an OpenAI-style error body ({"error": {"message", "type", "param", "code"}}).

Concurrency: one engine (model replica) per CUDA device, handed out through a queue, so requests beyond the number
of replicas wait their turn instead of sharing a KV cache; on a CPU there is one replica.
"""

from __future__ import annotations

import json
import queue
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nanoforge.errors import UserError

PAGE = Path(__file__).parent / "static" / "index.html"


@dataclass
class Limits:
    max_messages: int = 64
    max_chars: int = 32_000  # all message contents together
    max_tokens_cap: int = 1024
    default_max_tokens: int = 256
    max_n: int = 4
    queue_timeout_s: float = 300.0


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class EnginePool:
    """Hands each request a whole engine; a request waits for a free one (FIFO) up to a timeout."""

    def __init__(self, engines: list):
        self.engines = engines
        self._free: queue.Queue = queue.Queue()
        for engine in engines:
            self._free.put(engine)

    def get(self, timeout_s: float):
        try:
            return self._free.get(timeout=timeout_s)
        except queue.Empty:
            raise APIError(503, "all model replicas are busy; retry later", code="server_busy",
                           kind="server_error") from None

    def put(self, engine) -> None:
        self._free.put(engine)

    @contextmanager
    def acquire(self, timeout_s: float):
        engine = self.get(timeout_s)
        try:
            yield engine
        finally:
            self.put(engine)

    @property
    def tokenizer(self):
        return self.engines[0].tokenizer

    @property
    def max_context(self) -> int:
        return self.engines[0].max_context


# Request bodies (module level: FastAPI resolves these annotations by name).
class ContentPart(BaseModel):
    type: Literal["text"]
    text: str

class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False  # extension (as in vLLM): generate exactly max_tokens, for benchmarks


def create_app(pool: EnginePool, model_id: str, limits: Limits | None = None):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from nanoforge.serve.engine import SamplingParams, text_to_parts
    from nanoforge.tokenizer.chat import ConversationError, render_for_completion

    limits = limits or Limits()
    created = int(time.time())
    app = FastAPI(title="nanoforge", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return JSONResponse(APIError(400, "the request body is not valid JSON").body(), status_code=400)
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    def health():
        return {"status": "ok", "model": model_id, "replicas": len(pool.engines)}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "nanoforge"}]}

    @app.get("/v1/models/{name}")
    def model(name: str):
        if name != model_id:
            raise APIError(404, f"model '{name}' does not exist; this server has '{model_id}'", param="model",
                           code="model_not_found")
        return {"id": model_id, "object": "model", "created": created, "owned_by": "nanoforge"}

    def prepare(req: ChatRequest) -> tuple[list[int], SamplingParams, list[str]]:
        if req.model is not None and req.model != model_id:
            raise APIError(404, f"model '{req.model}' does not exist; GET /v1/models lists '{model_id}'",
                           param="model", code="model_not_found")
        if len(req.messages) > limits.max_messages:
            raise APIError(400, f"too many messages ({len(req.messages)}; limit {limits.max_messages})",
                           param="messages")
        chars = sum(len(m.text()) for m in req.messages)
        if chars > limits.max_chars:
            raise APIError(400, f"messages hold {chars} characters; limit {limits.max_chars}", param="messages")
        if req.messages[-1].role != "user":
            raise APIError(400, "the last message must come from the user", param="messages")
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens_cap:
            raise APIError(400, f"max_tokens {max_tokens} is above this server's cap ({limits.max_tokens_cap})",
                           param="max_tokens")
        if req.n > limits.max_n or (req.stream and req.n != 1):
            raise APIError(400, f"n must be 1 when streaming and at most {limits.max_n} otherwise", param="n")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
            raise APIError(400, "stop takes up to 4 non-empty strings of at most 200 characters", param="stop")
        conversation = {"messages": [
            {"role": m.role, "content": text_to_parts(m.text()) if m.role == "assistant" else m.text()}
            for m in req.messages]}
        try:
            prompt = render_for_completion(pool.tokenizer, conversation)
        except ConversationError as exc:
            raise APIError(400, str(exc), param="messages") from None
        if len(prompt) >= pool.max_context:
            raise APIError(400, f"the conversation is {len(prompt)} tokens; the model's context is "
                           f"{pool.max_context}", param="messages", code="context_length_exceeded")
        temperature = 0.6 if req.temperature is None else req.temperature
        params = SamplingParams(temperature=temperature, top_k=req.top_k, top_p=req.top_p,
                                max_tokens=max_tokens, seed=req.seed, num_samples=req.n,
                                ignore_eos=req.ignore_eos)
        return prompt, params, stops

    def chunk(cid: str, delta: dict, finish_reason: str | None = None) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        return f"data: {json.dumps(body)}\n\n"

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest):
        prompt, params, stops = prepare(req)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        if not req.stream:
            with pool.acquire(limits.queue_timeout_s) as engine:
                samples = engine.generate(prompt, params)
                reasons = engine.last_finish_reasons
                texts = [engine_text(engine, ids) for ids in samples]
            for i, text in enumerate(texts):
                cut, stopped = StopStrings(stops).feed(text)
                if stopped:
                    texts[i], reasons[i] = cut, "stop"
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reasons[i]}
                       for i, text in enumerate(texts)]
            completion_tokens = sum(len(ids) for ids in samples)
            return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model_id,
                    "choices": choices,
                    "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion_tokens,
                              "total_tokens": len(prompt) + completion_tokens}}

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def events():
            import codecs

            try:
                engine = pool.get(limits.queue_timeout_s)
            except APIError as exc:  # the response has started (200): report in the stream, as OpenAI does
                yield f"data: {json.dumps(exc.body())}\n\n"
                return
            try:
                yield chunk(cid, {"role": "assistant", "content": ""})
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                stop = StopStrings(stops)
                count, stopped = 0, False
                tokens = engine.stream(prompt, params)
                for step in tokens:
                    count += 1
                    piece, stopped = stop.feed(engine.token_text(step[0].id, decoder))
                    if piece:
                        yield chunk(cid, {"content": piece})
                    if stopped:
                        tokens.close()
                        break
                if not stopped:
                    tail, stopped = stop.feed(decoder.decode(b"", final=True))
                    tail += "" if stopped else stop.flush()
                    if tail:
                        yield chunk(cid, {"content": tail})
                finish_reason = "stop" if stopped else engine.finish_reason
            finally:  # also when the client goes away mid-stream (the generator is closed at a yield)
                pool.put(engine)
            yield chunk(cid, {}, finish_reason)
            if include_usage:
                usage = {"prompt_tokens": len(prompt), "completion_tokens": count,
                         "total_tokens": len(prompt) + count}
                body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": model_id, "choices": [], "usage": usage}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(drive(events()), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


class StopStrings:
    """OpenAI's `stop`: text ends just before the first stop string. While streaming, a tail that could be the
    start of a stop string is held back until the next piece settles it."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text that may be emitted now, whether a stop string was reached)."""
        if not self.stops:
            return piece, False
        text = self.held + piece
        hits = [text.find(s) for s in self.stops if s in text]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        hold = 0
        for k in range(min(max(map(len, self.stops)) - 1, len(text)), 0, -1):
            if any(s.startswith(text[-k:]) for s in self.stops):
                hold = k
                break
        self.held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


_END = object()


async def drive(blocking):
    """Advance a blocking generator in worker threads, one item at a time. However the response ends (finished,
    failed, or cancelled because the client went away), the generator is closed once its current step is done,
    which runs its cleanup (the replica goes back to the pool) without ever overlapping a step."""
    from starlette.concurrency import run_in_threadpool

    step_lock = threading.Lock()

    def advance():
        with step_lock:
            return next(blocking, _END)

    def close():
        with step_lock:
            blocking.close()

    try:
        while True:
            item = await run_in_threadpool(advance)
            if item is _END:
                return
            yield item
    finally:
        threading.Thread(target=close, name="close-stream", daemon=True).start()


def engine_text(engine, ids: list[int]) -> str:
    """A whole completion as the text the API returns (tool calls shown with the same markers as when streaming)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return "".join(engine.token_text(t, decoder) for t in ids) + decoder.decode(b"", final=True)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None


def run_web(args) -> int:
    import torch
    import uvicorn

    from nanoforge.serve.chat import load_engine, resolve_run_dir

    run_dir = resolve_run_dir(args.run_dir)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a TCP port (1-65535)")
    if args.max_tokens_cap < 1:
        raise UserError("--max-tokens-cap must be at least 1")
    _check_port_free(args.host, args.port)
    if args.device:
        devices = [args.device]
    elif torch.cuda.is_available():
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]  # one replica per GPU
    else:
        devices = ["cpu"]
    engines, stage = [], None
    for device in devices:
        engine, stage = load_engine(run_dir, args.stage, torch.device(device), python_sandbox=args.python_sandbox)
        engines.append(engine)
    model_id = f"{run_dir.name}-{stage}"
    limits = Limits(max_tokens_cap=args.max_tokens_cap, default_max_tokens=min(256, args.max_tokens_cap))
    app = create_app(EnginePool(engines), model_id, limits)
    print(f"nanoforge web: {model_id} on {', '.join(devices)}; open http://{args.host}:{args.port}/ "
          f"(API: http://{args.host}:{args.port}/v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=True)
    return 0
