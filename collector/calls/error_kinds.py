"""Why a call failed, named once for the analytics (Polars, :func:`analytics.dimensions.error_kind`)
and the metrics (SQL, :func:`collector.metrics.query.error_kind_sql`), which apply the same
rules in the same order: the client hung up; the connection to the provider failed before any
status, or broke mid-answer below 400 with a transport message; 429; other 4xx; 5xx;
otherwise the provider reported the error inside its answer."""

from __future__ import annotations

__all__ = ["CLIENT_DISCONNECT", "ERROR_KINDS", "UPSTREAM_RESET"]

#: Error kinds, first matching rule wins.
ERROR_KINDS = ("client_disconnect", "upstream_reset", "rate_limited", "http_4xx", "http_5xx", "in_band")

#: An error text saying the client hung up. RE2 (DuckDB) and Rust's regex (Polars) read these
#: patterns alike.
CLIENT_DISCONNECT = r"(?i)client.*disconnect|disconnect.*client"
#: What a transport failure between proxy and provider looks like in mitmproxy's and h11's
#: messages (a stream cut mid-way still has its 200 status).
UPSTREAM_RESET = (
    r"(?i)reset|peer closed|incomplete|server disconnected|connection (?:closed|aborted|lost|refused)"
    r"|timed? ?out|protocol error"
)
