"""A local stand-in for the OpenAI and Anthropic APIs, so ``llmtap demo`` needs no API key.

It answers what the official SDKs send, in the providers' own wire formats:
``/v1/chat/completions`` (plain, or a stream with the final usage chunk when the request
sets ``stream_options.include_usage``), ``/v1/responses`` (plain or streamed, with
reasoning tokens), ``/v1/embeddings`` (float or base64) and Anthropic's ``/v1/messages``
(plain or the ``message_start`` ... ``message_stop`` event stream).

The numbers are meant to look like production: input tokens are counted from the
request's text (4 characters a token), output lengths and speeds are drawn per model
from :data:`MODELS`, a long prompt whose opening was seen before is partly served from
the prompt cache (Anthropic only when the request marks it with ``cache_control``),
answers stop at the request's output limit, and a few calls fail with the provider's
own 429 or 500 error. Responses really take their time: the proxy measures latency
and time to first token on the wire.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import math
import random
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("llmtap.demo")

CHARS_PER_TOKEN = 4
#: Prompts this long or longer (in tokens) can be served from the cache, as with OpenAI.
CACHEABLE_TOKENS = 1024
#: Most events a stream is cut into; longer answers put several tokens in one event.
MAX_STREAM_EVENTS = 24
EMBEDDING_DIMENSIONS = 64
#: The words answers and demo prompts are made of.
FILLER = (
    "the model answer request token latency cost cache budget user session prompt context "
    "summary invoice refund order customer ticket review change function test deploy query "
    "result search document section policy account team release issue draft note plan"
)
WORDS = tuple(FILLER.split())


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How one model behaves: what it reports itself as, how long it answers, how fast."""

    snapshot: str  # the response's model id
    output_median: int  # tokens in a typical answer
    ttft_s: float  # typical time to the first token
    tokens_per_s: float
    reasoning_share: float = 0.0  # of the output, for reasoning models


MODELS: dict[str, ModelProfile] = {
    "gpt-4o": ModelProfile("gpt-4o-2024-08-06", 180, 0.45, 90),
    "gpt-4o-mini": ModelProfile("gpt-4o-mini-2024-07-18", 140, 0.3, 140),
    "gpt-4.1-mini": ModelProfile("gpt-4.1-mini-2025-04-14", 160, 0.3, 130),
    "o4-mini": ModelProfile("o4-mini-2025-04-16", 420, 0.9, 220, reasoning_share=0.7),
    "text-embedding-3-small": ModelProfile("text-embedding-3-small", 0, 0.08, 1),
    "claude-sonnet-4-5": ModelProfile("claude-sonnet-4-5-20250929", 220, 0.7, 85),
    "claude-3-5-haiku-latest": ModelProfile("claude-3-5-haiku-20241022", 120, 0.35, 150),
}

#: llmtap's shadow-routing judge prompt (collector.routing.compare.JUDGE_PROMPT) holds this; such a
#: prompt gets a one-word verdict drawn from VERDICTS instead of filler text.
JUDGE_MARK = "<answer_1>"
VERDICTS = {"SAME": 0.8, "1": 0.15, "2": 0.05}

#: Share of calls answered with each error status, drawn before anything else.
ERROR_RATES = {429: 0.04, 500: 0.015}

OPENAI_ERRORS = {
    429: {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"},
    500: {"message": "The server had an error while processing your request.", "type": "server_error"},
}
ANTHROPIC_ERRORS = {
    429: {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit"},
    500: {"type": "api_error", "message": "Internal server error"},
}


@dataclass(frozen=True, slots=True)
class Draw:
    """What one answer will be: its usage and its timing."""

    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    truncated: bool
    ttft_s: float
    tokens_per_s: float
    answer: str | None = None  # the reply's text when it is not filler (a judge's verdict)

    @property
    def text(self) -> str:
        if self.answer is not None:
            return self.answer
        visible = max(self.output_tokens - self.reasoning_tokens, 1)
        return " ".join(WORDS[i % len(WORDS)] for i in range(visible))

    def text_chunks(self) -> list[str]:
        words = self.text.split(" ")
        size = math.ceil(len(words) / MAX_STREAM_EVENTS)
        return [" ".join(words[i : i + size]) + " " for i in range(0, len(words), size)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client (the proxy) closing an idle keep-alive connection is routine, not a
        traceback on the demo's console."""
        log.debug("demo provider: connection from %s ended with an error", client_address, exc_info=True)


class DemoProvider:
    """The fake provider as a threaded HTTP server on 127.0.0.1; use as a context manager."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._seen_prefixes: set[str] = set()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                """Requests are what the proxy records; the console stays quiet."""

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                route = ROUTES.get(self.path.split("?")[0])
                if route is None:
                    self.send_json(404, {"error": {"message": f"no such route {self.path}"}})
                    return
                route(provider, self, body)

            def send_json(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def send_events(self, events: Iterator[tuple[str | None, Any]], pause_s: float) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for name, data in events:
                    payload = data if isinstance(data, str) else json.dumps(data)
                    event = (f"event: {name}\n" if name else "") + f"data: {payload}\n\n"
                    chunk = event.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    time.sleep(pause_s)
                self.wfile.write(b"0\r\n\r\n")

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-provider", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> DemoProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def failure(self) -> int | None:
        """The error status this call gets, if any."""
        with self._lock:
            roll = self._random.random()
        for status, rate in ERROR_RATES.items():
            if roll < rate:
                return status
            roll -= rate
        return None

    def verdict(self) -> str:
        with self._lock:
            return self._random.choices(list(VERDICTS), weights=list(VERDICTS.values()))[0]

    def draw(self, model: str, prompt: str, prefix: str, max_tokens: int | None, cache: bool) -> Draw:
        """Usage and timing for an answer of ``model`` to ``prompt`` (whose cacheable opening
        is ``prefix``), stopping at ``max_tokens``."""
        profile = MODELS.get(model) or MODELS["gpt-4o-mini"]
        input_tokens = math.ceil(len(prompt) / CHARS_PER_TOKEN) + 7
        key = hashlib.sha256(f"{model}\0{prefix}".encode()).hexdigest()
        with self._lock:
            seen = key in self._seen_prefixes
            self._seen_prefixes.add(key)
            wanted = round(profile.output_median * self._random.lognormvariate(0, 0.5))
            ttft = profile.ttft_s * self._random.lognormvariate(0, 0.3)
            speed = profile.tokens_per_s * self._random.lognormvariate(0, 0.15)
        cached = 0
        if cache and seen and input_tokens >= CACHEABLE_TOKENS:
            cached = (math.ceil(len(prefix) / CHARS_PER_TOKEN) // 128) * 128
        output = min(wanted, max_tokens) if max_tokens else wanted
        return Draw(
            input_tokens=input_tokens,
            cached_tokens=min(cached, input_tokens),
            output_tokens=max(output, 1) if profile.output_median else 0,
            reasoning_tokens=round(output * profile.reasoning_share),
            truncated=bool(max_tokens and wanted > max_tokens),
            ttft_s=ttft + input_tokens / 20000,  # prefill
            tokens_per_s=speed,
        )


def _text_of(content: Any) -> str:
    """The text in a message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _openai_usage(d: Draw, *, chat: bool) -> dict[str, Any]:
    if chat:
        return {
            "prompt_tokens": d.input_tokens,
            "completion_tokens": d.output_tokens,
            "total_tokens": d.input_tokens + d.output_tokens,
            "prompt_tokens_details": {"cached_tokens": d.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": d.reasoning_tokens, "audio_tokens": 0},
        }
    return {
        "input_tokens": d.input_tokens,
        "input_tokens_details": {"cached_tokens": d.cached_tokens},
        "output_tokens": d.output_tokens,
        "output_tokens_details": {"reasoning_tokens": d.reasoning_tokens},
        "total_tokens": d.input_tokens + d.output_tokens,
    }


def _openai_error(provider: DemoProvider, handler: Any) -> bool:
    status = provider.failure()
    if status is None:
        return False
    time.sleep(0.05)
    headers = {"retry-after": "1"} if status == 429 else {}
    handler.send_json(status, {"error": {"param": None, "code": None, **OPENAI_ERRORS[status]}}, headers)
    return True


def chat_completions(provider: DemoProvider, handler: Any, body: dict[str, Any]) -> None:
    if _openai_error(provider, handler):
        return
    messages = body.get("messages") or []
    prompt = " ".join(_text_of(m.get("content")) for m in messages)
    prefix = _text_of(messages[0].get("content")) if messages else ""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    d = provider.draw(body.get("model", ""), prompt, prefix, limit, cache=True)
    if JUDGE_MARK in prompt:
        d = dataclasses.replace(d, answer=provider.verdict(), output_tokens=1, truncated=False)
    snapshot = MODELS.get(body.get("model", ""), MODELS["gpt-4o-mini"]).snapshot
    finish = "length" if d.truncated else "stop"
    head = {"id": _new_id("chatcmpl-"), "created": int(time.time()), "model": snapshot}
    time.sleep(d.ttft_s)
    if not body.get("stream"):
        time.sleep(d.output_tokens / d.tokens_per_s)
        message = {"role": "assistant", "content": d.text, "refusal": None}
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        usage = _openai_usage(d, chat=True)
        handler.send_json(200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage})
        return
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunks = d.text_chunks()

    def events() -> Iterator[tuple[None, Any]]:
        chunk = {**head, "object": "chat.completion.chunk", **({"usage": None} if include_usage else {})}
        deltas = [{"role": "assistant", "content": ""}, *({"content": text} for text in chunks)]
        for delta in deltas:
            yield None, {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        if include_usage:
            yield None, {**chunk, "choices": [], "usage": _openai_usage(d, chat=True)}
        yield None, "[DONE]"

    handler.send_events(events(), _pause(d, len(chunks)))


def responses(provider: DemoProvider, handler: Any, body: dict[str, Any]) -> None:
    if _openai_error(provider, handler):
        return
    raw = body.get("input")
    items = [{"content": raw}] if isinstance(raw, str) else raw or []
    prompt = " ".join([body.get("instructions") or "", *(_text_of(i.get("content")) for i in items)])
    d = provider.draw(body.get("model", ""), prompt, body.get("instructions") or "", None, cache=True)
    snapshot = MODELS.get(body.get("model", ""), MODELS["gpt-4o-mini"]).snapshot
    message_id = _new_id("msg_")
    message = {
        "type": "message",
        "id": message_id,
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": d.text, "annotations": []}],
    }
    response = {
        "id": _new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": snapshot,
        "output": [{"type": "reasoning", "id": _new_id("rs_"), "summary": []}, message],
        "usage": _openai_usage(d, chat=False),
    }
    # Reasoning happens before the first visible token.
    time.sleep(d.ttft_s + d.reasoning_tokens / d.tokens_per_s)
    if not body.get("stream"):
        time.sleep((d.output_tokens - d.reasoning_tokens) / d.tokens_per_s)
        handler.send_json(200, response)
        return
    chunks = d.text_chunks()

    def events() -> Iterator[tuple[str, Any]]:
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        yield "response.created", {"type": "response.created", "sequence_number": 0, "response": started}
        for n, text in enumerate(chunks, start=1):
            delta = {"item_id": message_id, "output_index": 1, "content_index": 0, "delta": text}
            yield (
                "response.output_text.delta",
                {"type": "response.output_text.delta", "sequence_number": n, **delta},
            )
        done = {"type": "response.completed", "sequence_number": len(chunks) + 1, "response": response}
        yield "response.completed", done

    handler.send_events(events(), _pause(d, len(chunks)))


def embeddings(provider: DemoProvider, handler: Any, body: dict[str, Any]) -> None:
    if _openai_error(provider, handler):
        return
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else list(raw or [])
    d = provider.draw(body.get("model", ""), " ".join(map(str, inputs)), "", None, cache=False)
    time.sleep(d.ttft_s)
    vector = [math.sin(i) for i in range(EMBEDDING_DIMENSIONS)]
    packed = base64.b64encode(struct.pack(f"<{EMBEDDING_DIMENSIONS}f", *vector)).decode()
    encoded = packed if body.get("encoding_format") == "base64" else vector
    data = [{"object": "embedding", "index": i, "embedding": encoded} for i in range(len(inputs))]
    usage = {"prompt_tokens": d.input_tokens, "total_tokens": d.input_tokens}
    handler.send_json(200, {"object": "list", "data": data, "model": body.get("model"), "usage": usage})


def messages(provider: DemoProvider, handler: Any, body: dict[str, Any]) -> None:
    status = provider.failure()
    if status is not None:
        time.sleep(0.05)
        handler.send_json(status, {"type": "error", "error": ANTHROPIC_ERRORS[status]})
        return
    system = body.get("system") or ""
    system_text = _text_of(system)
    prompt = " ".join([system_text, *(_text_of(m.get("content")) for m in body.get("messages") or [])])
    cache = "cache_control" in json.dumps(system)
    d = provider.draw(body.get("model", ""), prompt, system_text, body.get("max_tokens"), cache=cache)
    # Anthropic reports input without the cache: reads and writes are counted on their own.
    written = math.ceil(len(system_text) / CHARS_PER_TOKEN) if cache and not d.cached_tokens else 0
    usage = {
        "input_tokens": d.input_tokens - d.cached_tokens - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": d.cached_tokens,
        "output_tokens": d.output_tokens,
    }
    snapshot = MODELS.get(body.get("model", ""), MODELS["claude-3-5-haiku-latest"]).snapshot
    stop = "max_tokens" if d.truncated else "end_turn"
    message = {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": snapshot,
        "content": [{"type": "text", "text": d.text}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
    time.sleep(d.ttft_s)
    if not body.get("stream"):
        time.sleep(d.output_tokens / d.tokens_per_s)
        handler.send_json(200, message)
        return
    chunks = d.text_chunks()

    def events() -> Iterator[tuple[str, Any]]:
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        yield "message_start", {"type": "message_start", "message": start}
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        yield "content_block_start", block
        for text in chunks:
            delta = {"type": "text_delta", "text": text}
            yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        end = {"stop_reason": stop, "stop_sequence": None}
        yield (
            "message_delta",
            {"type": "message_delta", "delta": end, "usage": {"output_tokens": d.output_tokens}},
        )
        yield "message_stop", {"type": "message_stop"}

    handler.send_events(events(), _pause(d, len(chunks)))


def _pause(d: Draw, events: int) -> float:
    """Seconds between stream events so the visible answer arrives at the model's speed."""
    return (d.output_tokens - d.reasoning_tokens) / d.tokens_per_s / max(events, 1)


ROUTES = {
    "/v1/chat/completions": chat_completions,
    "/v1/responses": responses,
    "/v1/embeddings": embeddings,
    "/v1/messages": messages,
}
