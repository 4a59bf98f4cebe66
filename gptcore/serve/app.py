"""HTTP over the inference engine: OpenAI's completions and chat completions, streamed or not, and a chat page.

    POST /v1/completions        model, prompt (string, list of strings, token ids), max_tokens, temperature,
                                top_p, top_k (an extension), n, stop, seed, stream, stream_options
    POST /v1/chat/completions   the same with messages instead of prompt (template: gptcore/serve/protocol.py)
    GET  /v1/models             the one model served
    GET  /health                liveness, plus the scheduler's rows (running, waiting) and steps by rows decoded
    GET  /                      the chat page (static/index.html)

Every error is OpenAI's JSON, {"error": {"message", "type", "param", "code"}}, with a 4xx status for anything the
client can fix: 400 for a bad field (named in `param`), 401 for a wrong key, 404 for an unknown model, 413 for a
body over MAX_BODY_BYTES, 503 when the queue is full, 504 past the timeout. A prompt and its max_tokens must fit in
the context together (400 otherwise): the model's learned positions end at block_size.

One log line per request: id, method, path, status, and for generations the prompt and completion tokens, the time
to the first token and the completion tokens per second of the whole request.
"""

import asyncio
import collections
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from ..errors import GPTCoreError
from ..infer import Request as Row
from .batcher import QueueFull, Scheduler
from .protocol import CHAT_STOP, APIError, ChatRequest, CompletionRequest, chat_prompt, check_length, parse

DEFAULT_TIMEOUT = 300.0  # seconds from a request's arrival to its last token
MAX_BODY_BYTES = 1 << 20  # a full context of text is ~5 KB; 1 MiB leaves room for long lists of prompts
STATIC = Path(__file__).parent / "static"

log = logging.getLogger("gptcore.serve")


def create_app(scheduler: Scheduler, model_name: str, api_key: str | None = None,
               timeout: float = DEFAULT_TIMEOUT) -> FastAPI:
    """The ASGI app serving scheduler.engine's model as `model_name`. Its lifespan starts and closes the scheduler."""
    engine = scheduler.engine
    tokenizer, block_size = engine.tokenizer, engine.block_size

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        scheduler.close()

    # no /docs: Swagger's page loads its scripts from a CDN, and the OpenAI API is documented elsewhere
    app = FastAPI(title="gptcore", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestLog)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        request.state.error = e.message
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # unknown paths, wrong methods
        return await api_error(request, APIError(e.status_code, str(e.detail), type="invalid_request_error"))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):  # a bug: the client still gets JSON, the log the trace
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return await api_error(request, APIError(500, "internal server error; see the server log",
                                                 type="server_error"))

    async def authorize(request: Request):  # async: a plain def would run in a thread pool, a hop per request
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the "
                                "key given to serve.py --api-key", param="authorization", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [model_card(model_name)]}

    @v1.post("/completions")
    async def completions(request: Request):
        req = parse(CompletionRequest, await read_body(request))
        check_model(req.model, model_name)
        prompts = [encode(p, tokenizer) for p in req.prompt]
        for ids in prompts:
            check_length(len(ids), req.max_tokens, block_size, "prompt", "max_tokens")
        rows = make_rows(req, prompts, req.max_tokens, req.stop, "n" if req.n > 1 else "prompt", scheduler)
        job = Job(request, scheduler, rows, timeout, "cmpl", sum(map(len, prompts)))
        if req.stream:
            return sse(job.completion_chunks(model_name, req))
        return await job.finish(job.completion(model_name))

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        req = parse(ChatRequest, await read_body(request))
        check_model(req.model, model_name)
        ids = encode(chat_prompt(req.messages), tokenizer)
        max_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = req.max_completion_tokens or req.max_tokens or max(1, block_size - len(ids))
        check_length(len(ids), max_tokens, block_size, "messages", max_param)
        rows = make_rows(req, [ids], max_tokens, [*req.stop, CHAT_STOP], "n", scheduler)
        job = Job(request, scheduler, rows, timeout, "chatcmpl", len(ids))
        if req.stream:
            return sse(job.chat_chunks(model_name, req))
        return await job.finish(job.chat_completion(model_name))

    app.include_router(v1)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **scheduler.stats()}

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ---- request pieces ----

async def read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it passes MAX_BODY_BYTES (whether or not it announced its length)."""
    too_big = APIError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", param="body",
                       code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def check_model(name: str, model_name: str):
    if name != model_name:
        raise APIError(404, f"model: the model '{name}' does not exist here; this server has '{model_name}' "
                            "(GET /v1/models)", param="model", code="model_not_found")


def model_card(model_name: str) -> dict:
    return {"id": model_name, "object": "model", "created": 0, "owned_by": "gptcore"}


def encode(prompt: str | list[int], tokenizer) -> list[int]:
    """A prompt -> its token ids; the empty prompt is <|endoftext|>, where sample.py starts too."""
    if isinstance(prompt, list):
        bad = [i for i in prompt if not 0 <= i < tokenizer.n_vocab]
        if bad:
            raise APIError(400, f"prompt: token id {bad[0]} is outside the vocabulary [0, {tokenizer.n_vocab})",
                           param="prompt")
        return prompt
    try:
        return tokenizer.encode(prompt, allow_special=True) if prompt else [tokenizer.eot_token]
    except GPTCoreError as e:  # a character-level model meeting a character it doesn't know
        raise APIError(400, f"prompt: {e}", param="prompt") from None


def make_rows(req, prompts, max_tokens, stop, rows_param, scheduler) -> list[Row]:
    """One engine Request per prompt and choice; choice j of a seeded request samples with seed + j."""
    if len(prompts) * req.n > scheduler.max_batch:
        raise APIError(400, f"{rows_param}: this asks for {len(prompts) * req.n} completions (prompts x n) and the "
                            f"server decodes at most {scheduler.max_batch} together (serve.py --max-batch)",
                       param=rows_param)
    return [Row(ids=list(ids), max_new_tokens=max_tokens, stop=stop, seed=None if req.seed is None else req.seed + j,
                **req.sampling())
            for ids in prompts for j in range(req.n)]


def sse(batches) -> StreamingResponse:
    """Server-sent events from lists of JSON chunks: each list goes out in one write."""
    async def lines():
        async for chunks in batches:
            yield "".join(f"data: {chunk}\n\n" for chunk in chunks)
        yield "data: [DONE]\n\n"
    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ---- one request's rows in flight ----

class Job:
    """An HTTP request's rows in the scheduler. The worker thread hands their events to this request's event
    loop; on disconnect, timeout or error the rows are cancelled, which frees their places at once."""

    def __init__(self, request: Request, scheduler: Scheduler, rows: list[Row], timeout: float, prefix: str,
                 prompt_tokens: int):
        self.request, self.scheduler, self.rows = request, scheduler, rows
        self.id = f"{prefix}-{request.state.id}"
        self.created = int(time.time())
        self.timeout = timeout
        self.stats = request.state.stats = {"prompt": prompt_tokens, "completion": 0, "ttft": None}
        self.loop = asyncio.get_running_loop()
        self.arrived = collections.deque()  # (row index, event) pairs the worker handed over, not yet read
        self.wake = None  # the future events() awaits while nothing has arrived
        self.expired = False
        self.deadline = self.loop.time() + timeout
        try:
            self.ticket = scheduler.submit(rows, self._on_events)
        except QueueFull as e:
            raise APIError(503, f"the server is busy: {e}", type="server_error", code="overloaded") from None

    def _on_events(self, items):  # on the worker thread: one step's (index, event) pairs of this request's rows
        try:
            self.loop.call_soon_threadsafe(self._arrive, items)
        except RuntimeError:  # the event loop has closed: the server is shutting down
            pass

    def _arrive(self, items):  # on the event loop
        self.arrived.extend(items)
        self._wake_up()

    def _expire(self):
        self.expired = True
        self._wake_up()

    def _wake_up(self):
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def events(self):
        """Lists of (row index, Event), each list all that arrived since the last, until every row has finished;
        raises APIError past the timeout or if the engine failed. Leaving early, for whatever reason, cancels the
        rows still running. One plain future and one timer per request, not a task per token: with four clients,
        the event loop's work per token is on the decode's critical path."""
        left = len(self.rows)
        timer = self.loop.call_at(self.deadline, self._expire)
        try:
            while left:
                if self.expired:
                    self.stats["finish"] = "timeout"
                    raise APIError(504, f"the request took longer than the server's timeout of {self.timeout:g} s; "
                                        "ask for fewer tokens, or retry when the server is less busy",
                                   type="server_error", code="timeout")
                if not self.arrived:
                    self.wake = self.loop.create_future()
                    try:
                        await self.wake
                    except asyncio.CancelledError:  # the client left
                        self.stats["finish"] = "disconnected"
                        raise
                    continue
                items = list(self.arrived)
                self.arrived.clear()
                for index, event in items:
                    if isinstance(event, Exception):
                        raise APIError(500, "the engine failed on this request; see the server log",
                                       type="server_error")
                    if event.token is not None:
                        if self.stats["ttft"] is None:
                            self.stats["ttft"] = time.perf_counter() - self.request.state.start
                        self.stats["completion"] += 1
                    left -= event.finish_reason is not None
                yield items
        finally:
            timer.cancel()
            self.scheduler.cancel(self.ticket)

    async def finish(self, result):
        """Awaits a non-streamed result; a client that disconnects meanwhile cancels it (logged as status 499)."""
        task = asyncio.ensure_future(result)
        watch = asyncio.ensure_future(self._watch_disconnect(task))
        try:
            return await task
        except asyncio.CancelledError:
            if not watch.done() or watch.cancelled():
                raise  # the server itself is cancelling us
            self.stats["finish"] = "disconnected"
            raise APIError(499, "the client closed the request") from None
        finally:
            watch.cancel()

    async def _watch_disconnect(self, task):
        while (await self.request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    def usage(self) -> dict:
        prompt, completion = self.stats["prompt"], self.stats["completion"]
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _texts(self, strip_leading: bool):
        """Each row's whole text and finish_reason."""
        texts, reasons = [""] * len(self.rows), [None] * len(self.rows)
        async for items in self.events():
            for index, event in items:
                texts[index] += event.text
                reasons[index] = event.finish_reason or reasons[index]
        return [t.lstrip() if strip_leading else t for t in texts], reasons

    async def completion(self, model_name: str) -> dict:
        texts, reasons = await self._texts(strip_leading=False)
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": model_name,
                "choices": choices, "usage": self.usage()}

    async def chat_completion(self, model_name: str) -> dict:
        texts, reasons = await self._texts(strip_leading=True)
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": model_name,
                "choices": choices, "usage": self.usage()}

    def _chunk(self, obj: str, model_name: str, choices: list, usage: dict | None = None) -> str:
        chunk = {"id": self.id, "object": obj, "created": self.created, "model": model_name, "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        return json_text(chunk)

    def completion_chunks(self, model_name: str, req: CompletionRequest):
        return self._stream(model_name, req, "text_completion", self._completion_choice, False)

    async def chat_chunks(self, model_name: str, req: ChatRequest):
        # OpenAI's first chunk of each choice names the role
        yield [self._chunk("chat.completion.chunk", model_name,
                           [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}]) for i in range(len(self.rows))]
        async for chunks in self._stream(model_name, req, "chat.completion.chunk", self._chat_choice, True):
            yield chunks

    @staticmethod
    def _completion_choice(index, text, finish_reason):
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}

    @staticmethod
    def _chat_choice(index, text, finish_reason):
        return {"index": index, "delta": {"content": text} if text else {}, "logprobs": None,
                "finish_reason": finish_reason}

    async def _stream(self, model_name, req, obj, choice, strip_leading: bool):
        """Lists of chunks, one list per batch of events: a chunk per piece of text and one with each
        finish_reason; errors become an error chunk."""
        started = [not strip_leading] * len(self.rows)  # chat replies drop their leading whitespace
        try:
            async for items in self.events():
                chunks = []
                for index, event in items:
                    text = event.text
                    if not started[index]:
                        text = text.lstrip()
                        started[index] = bool(text)
                    if text or event.finish_reason:
                        chunks.append(self._chunk(obj, model_name, [choice(index, text, event.finish_reason)]))
                if chunks:
                    yield chunks
        except APIError as e:
            yield [json_text(e.body())]
            return
        if req.stream_options and req.stream_options.include_usage:
            yield [self._chunk(obj, model_name, [], self.usage())]


def json_text(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# ---- logging ----

class RequestLog:
    """ASGI middleware: gives each request an id and a start time, and logs one line once its response is done."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        state["id"], state["start"] = uuid.uuid4().hex[:16], time.perf_counter()
        status = 499  # until a response starts: the client left first

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            log.info(log_line(scope["method"], scope["path"], status, state))


def log_line(method: str, path: str, status: int, state: dict) -> str:
    seconds = time.perf_counter() - state["start"]
    line = f"{state['id']} {method} {path} {status} {seconds:.3f}s"
    stats = state.get("stats")
    if stats:
        ttft = "-" if stats["ttft"] is None else f"{stats['ttft']:.3f}s"
        line += (f" prompt={stats['prompt']} completion={stats['completion']} ttft={ttft} "
                 f"tok/s={stats['completion'] / seconds:.1f}")
        if "finish" in stats:
            line += f" ({stats['finish']})"
    if "error" in state:
        line += f" error: {state['error']}"
    return line
