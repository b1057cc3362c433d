"""What calls can be grouped by, and the per-call classifications every analysis shares.

A dimension is a name in ``by=[...]``: one of :data:`DIMENSIONS`, ``property:KEY`` (a
key of the ``properties`` JSON, e.g. ``property:team``, spelt as a budget's ``per`` in
the config), or any column of the frame.
Each becomes one Polars expression, so ``spend(calls, by=["app", "property:team",
"week"])`` is one group-by. Missing values group under ``(none)`` rather than vanishing.
Time buckets are UTC; weeks start on Monday (as DuckDB's ``date_trunc('week', ...)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from analytics.source import SCHEMA
from collector.calls.error_kinds import CLIENT_DISCONNECT, ERROR_KINDS, UPSTREAM_RESET

NONE = "(none)"

#: Time bucket name -> Polars duration string.
TIME_BUCKETS: dict[str, str] = {"hour": "1h", "day": "1d", "week": "1w", "month": "1mo"}

#: Dimension name -> what it groups by (an unknown name's error lists these).
DIMENSIONS: dict[str, str] = {
    "model": "the model the provider reported, else the one requested",
    "provider": "openai, anthropic, gemini, ...",
    "api": "chat, responses, messages, embeddings, ...",
    "app": "X-Llmtap-App (or the config's app)",
    "user": "X-Llmtap-User",
    "session": "X-Llmtap-Session",
    "status_class": "2xx, 3xx, 4xx, 5xx, or none (no response)",
    "error_kind": f"why the call failed: {', '.join(ERROR_KINDS)} (none for calls without error)",
    **{name: f"start time truncated to the {name} (UTC)" for name in TIME_BUCKETS},
}

_COLUMNS = {"user": "user_id", "session": "session_id"}


#: Finish reasons meaning "cut off at the output limit": OpenAI chat ``length``; Anthropic
#: and Bedrock ``max_tokens``; Gemini, Vertex and Cohere ``MAX_TOKENS``; OpenAI Responses'
#: ``incomplete_details.reason`` ``max_output_tokens``.
TRUNCATION_REASONS = ("length", "max_tokens", "MAX_TOKENS", "max_output_tokens")


def is_error() -> pl.Expr:
    """A call is an error when the recorder filled ``error`` (HTTP errors included)."""
    return pl.col("error").is_not_null()


def status_class() -> pl.Expr:
    """``2xx`` ... ``5xx`` from the upstream status, ``none`` when no response arrived."""
    return (
        pl.when(pl.col("status_code").is_null())
        .then(pl.lit("none"))
        .otherwise((pl.col("status_code") // 100).cast(pl.String) + "xx")
    )


def error_kind() -> pl.Expr:
    """Why an erroring call failed; null for calls without error.

    In order: the client hung up (``client_disconnect``); the connection to the provider
    failed before any status, or broke mid-answer after a status below 400 with a
    transport message such as "peer closed connection" (``upstream_reset``); HTTP 429
    (``rate_limited``); other 4xx (``http_4xx``); 5xx, including Anthropic's 529
    (``http_5xx``); otherwise the provider answered below 400 and reported the error
    inside the answer, such as a stream's error event or a blocked prompt (``in_band``).
    """
    status, text = pl.col("status_code"), pl.col("error")
    return (
        pl.when(text.is_null())
        .then(None)
        .when(text.str.contains(CLIENT_DISCONNECT))
        .then(pl.lit("client_disconnect"))
        .when(status.is_null() | ((status < 400) & text.str.contains(UPSTREAM_RESET)))
        .then(pl.lit("upstream_reset"))
        .when(status == 429)
        .then(pl.lit("rate_limited"))
        .when(status.is_between(400, 499))
        .then(pl.lit("http_4xx"))
        .when(status >= 500)
        .then(pl.lit("http_5xx"))
        .otherwise(pl.lit("in_band"))
    )


def truncated() -> pl.Expr:
    """The answer was cut off at the output-token limit (see TRUNCATION_REASONS)."""
    return (
        pl.col("finish_reasons").list.eval(pl.element().is_in(TRUNCATION_REASONS)).list.any().fill_null(False)
    )


def ok() -> pl.Expr:
    """The complement of :func:`is_error`: the calls latency and duplicates are measured on."""
    return pl.col("error").is_null()


def as_list(by: str | Sequence[str]) -> list[str]:
    """``by`` as a list: a single name is accepted for convenience."""
    return [by] if isinstance(by, str) else list(by)


def dimension(name: str) -> pl.Expr:
    """The expression grouping by ``name``, aliased to it; ValueError for an unknown name."""
    if name in TIME_BUCKETS:
        expr = pl.col("started_at").dt.truncate(TIME_BUCKETS[name])
    elif name == "status_class":
        expr = status_class()
    elif name == "error_kind":
        expr = error_kind().fill_null(NONE)
    elif name.startswith("property:") and len(name) > len("property:"):
        key = name.removeprefix("property:").lower()  # the proxy stores property names lower-cased
        expr = (
            pl.col("properties")
            .str.json_decode(pl.Struct({key: pl.String}))
            .struct.field(key)
            .fill_null(NONE)
        )
    else:
        column = _COLUMNS.get(name, name)
        if column not in SCHEMA:
            known = ", ".join([*DIMENSIONS, "property:KEY"])
            raise ValueError(f"cannot group by {name!r}: use one of {known}, or a column name")
        expr = pl.col(column).fill_null(NONE) if SCHEMA[column] == pl.String() else pl.col(column)
    return expr.alias(name)


def group_keys(by: str | Sequence[str]) -> list[pl.Expr]:
    """The expressions for ``by`` (see :func:`dimension`), each name checked."""
    return [dimension(name) for name in as_list(by)]


def time_keys(by: str | Sequence[str]) -> list[str]:
    """The time buckets among ``by``, which results list in time order."""
    return [name for name in as_list(by) if name in TIME_BUCKETS]
