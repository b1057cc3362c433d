"""Vertex AI (aiplatform.googleapis.com and its regional ``{region}-aiplatform`` hosts).

The model is in the URL: ``.../publishers/{publisher}/models/{model}:{method}`` (with or
without the ``projects/{p}/locations/{l}`` prefix), or ``.../endpoints/{id}:{method}`` for
a deployed or tuned model. Google's own models speak the Gemini format, read by
:mod:`collector.providers.gemini`; Vertex also reports the traffic type it served a call
at (``usageMetadata.trafficType``, e.g. ``ON_DEMAND_FLEX``), which becomes the service tier.

Partner models are served in their vendor's format: Anthropic's Messages API through
``:rawPredict``/``:streamRawPredict`` (read by the Anthropic provider's code), others such
as Mistral through the same methods and the ``endpoints/openapi/chat/completions``
endpoint in OpenAI's chat format. ``:predict`` serves the text-embedding models, which
report ``statistics.token_count`` per input.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from collector.providers import anthropic, gemini, openai
from collector.providers.base import RequestFacts, ResponseFacts, Usage, as_int, dig, text_length

_CALL = re.compile(r"/(?:publishers/([^/]+)/models|endpoints)/([^/:]+):(\w+)$")
_GEMINI_METHODS = {"generateContent", "streamGenerateContent"}
_STREAM_METHODS = {"streamGenerateContent", "streamRawPredict"}


def _call(path: str) -> tuple[str, str, str] | None:
    """(publisher, model, method) of a model call; publisher "google" for endpoints."""
    found = _CALL.search(path.split("?", 1)[0].rstrip("/"))
    if found is None:
        return None
    publisher, model, method = found.groups()
    return (publisher or "google").lower(), unquote(model), method


def _predict_usage(body: dict[str, Any]) -> Usage | None:
    """Embedding ``:predict`` responses count tokens per input; their sum is the input."""
    counts = [
        as_int(dig(prediction, "embeddings", "statistics", "token_count"))
        for prediction in body.get("predictions") or ()
    ]
    if not counts or any(count is None for count in counts):
        return None
    return Usage(input_tokens=sum(count or 0 for count in counts))


class Vertex:
    name = "vertex"
    hosts = ("aiplatform.googleapis.com", "*-aiplatform.googleapis.com")
    prices_id = "google"
    #: Requests carry short-lived Google Cloud OAuth tokens, not an API key.
    api_key = None
    stream_usage_option = False

    def api_for(self, path: str) -> str | None:
        clean = path.split("?", 1)[0].rstrip("/")
        if clean.endswith("/endpoints/openapi/chat/completions"):
            return "chat"
        if (call := _call(clean)) is None:
            return None
        publisher, model, method = call
        if method in _GEMINI_METHODS:
            return "generate_content"
        if method in ("rawPredict", "streamRawPredict"):
            return "messages" if publisher == "anthropic" else "chat"
        if method == "predict":
            return "embeddings" if "embedding" in model else "predict"
        return None

    def read_request(self, api: str, path: str, body: Any) -> RequestFacts:
        call = _call(path)
        if api == "messages":
            facts = anthropic.PROVIDER.read_request(api, path, body)
        elif api == "chat":
            facts = openai.PROVIDER.read_request(api, path, body)
        elif api in ("embeddings", "predict") and isinstance(body, dict):
            facts = RequestFacts(prompt_chars=text_length(body.get("instances")))
        else:
            facts = gemini.request_facts(api, body)
        if call is not None:
            facts.model = facts.model or call[1]
            facts.stream = facts.stream or call[2] in _STREAM_METHODS
        return facts

    def read_response(self, api: str, body: Any, facts: ResponseFacts) -> None:
        if api == "messages":
            anthropic.PROVIDER.read_response(api, body, facts)
        elif api == "chat":
            openai.PROVIDER.read_response(api, body, facts)
        elif isinstance(body, dict) and "predictions" in body:
            facts.usage = _predict_usage(body)
            if isinstance(metadata := body.get("metadata"), dict):
                facts.usage_raw = metadata
        else:
            gemini.read_body(body, facts)

    def read_event(self, api: str, event: str, data: Any, facts: ResponseFacts) -> None:
        if api == "messages":
            anthropic.PROVIDER.read_event(api, event, data, facts)
        elif api == "chat":
            openai.PROVIDER.read_event(api, event, data, facts)
        elif isinstance(data, dict):
            gemini.read_chunk(data, facts)

    def limit_error(self, api: str, message: str) -> dict[str, Any]:
        if api == "messages":
            return anthropic.error_body(message)
        return openai.error_body(message) if api == "chat" else gemini.error_body(message)


PROVIDER = Vertex()
