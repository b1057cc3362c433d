"""Edits of a request that more than one stage makes: sending a call to another model.

A budget's downgrade and a routing rule both rewrite the model a call asks for; both go
through :func:`rewrite_model`, which records the client's model in the call's
:class:`~collector.storage.schema.ModelRewrite` part. Neither touches a signed request.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote, unquote

from mitmproxy import http

from collector.proxy.call import REWRITE_KEY, Capture
from collector.storage.schema import ModelRewrite
from collector.wire.bodies import json_or_none
from collector.wire.headers import signs_body

__all__ = ["is_signed", "rewrite_model", "with_model"]

_PATH_MODEL = re.compile(r"/models/([^/:?]+):")


def is_signed(headers: http.Headers) -> bool:
    """AWS SigV4 signs the body: changing it would make the request fail."""
    return any(signs_body(name.lower(), value) for name, value in headers.fields)


def rewrite_model(flow: http.HTTPFlow, capture: Capture, target: str) -> str | None:
    """Send the call to ``target`` instead: the JSON body's ``model``, else the model segment of
    a ``/models/{model}:method`` path (Gemini, Vertex). Returns why not when that is not simple.

    The call's row then says ``target`` (the recorder's request facts are updated: the one
    edit of the recorder's part another stage makes) and keeps the client's model in
    ``routed_from_model``."""
    why_not = with_model(flow.request, capture.request.model, target)
    if why_not is None:
        flow.metadata[REWRITE_KEY] = ModelRewrite(routed_from_model=capture.request.model)
        capture.request.model = target
    return why_not


def with_model(request: http.Request, current: str | None, target: str) -> str | None:
    """Edit ``request`` (asking for ``current``) to ask for ``target``; why not, when it cannot."""
    if is_signed(request.headers):
        return "the request is signed over its body (AWS SigV4)"
    path, sep, query = request.path.partition("?")
    found = _PATH_MODEL.search(path)
    body = json_or_none(request.content)
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        body["model"] = target
        request.content = json.dumps(body, separators=(",", ":")).encode()
    elif found is not None and unquote(found.group(1)) == current:
        new_path = path[: found.start(1)] + quote(target, safe="") + path[found.end(1) :]
        request.path = new_path + sep + query
    else:
        return "its model is neither in the JSON body nor in a /models/NAME: path"
    return None
