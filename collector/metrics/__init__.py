"""Prometheus metrics of the recorded calls: ``llmtap proxy --metrics-port PORT``.

Computed at scrape time from the store, in a thread of the proxy: the counters are exactly
the store's totals (so they equal ``llmtap report``'s, survive restarts and only grow while
the store does), and the request path does nothing for them. :mod:`.query` is the one SQL
query a scrape runs, :mod:`.labels` the bound on label values, :mod:`.families` the metrics
and their names (the OpenTelemetry GenAI conventions' where they have one), :mod:`.exposition`
the text format and :mod:`.server` the HTTP endpoint.
"""

from collector.metrics.server import MetricsPortError, MetricsServer

__all__ = ["MetricsPortError", "MetricsServer"]
