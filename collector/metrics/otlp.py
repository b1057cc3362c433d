"""The same metrics pushed over OTLP/HTTP when an OTLP endpoint is set (as spans are).

Every :attr:`OtlpMetrics.interval_s` (``OTEL_METRIC_EXPORT_INTERVAL``, 60 s by default as in
the OpenTelemetry SDK) a thread of the proxy reads the store
(:func:`collector.metrics.snapshot.snapshot`, the reading a Prometheus scrape makes) and sends
every metric under its OpenTelemetry name and unit, labels as attribute keys
(:data:`collector.metrics.families.ATTRIBUTES`), with cumulative temporality: the store's
totals are cumulative already, and each series' start time is when this proxy began
exporting. The proxy's stop sends a last reading, so a short run's calls are exported too.

The SDK's instruments are not used: they count events as they happen, while these totals come
from the store at once, histograms included, and an SDK histogram cannot be given bucket
counts. The data points are built as the SDK's own export types and sent by its OTLP exporter,
which brings the ``OTEL_EXPORTER_OTLP_*`` settings (headers, timeout, compression,
certificates). A histogram's ``min`` and ``max`` are left unset (OTLP makes them optional;
the store's totals do not keep them).

Fail open: a reading or an export that fails is logged when its reason is new; the next
interval tries again, and nothing here touches traffic.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as OtlpHistogram
from opentelemetry.sdk.metrics.export import Metric as OtlpMetric
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from collector.budgets.limits import Budget
from collector.metrics.families import ATTRIBUTES
from collector.metrics.labels import LabelBounds
from collector.metrics.model import Histogram, Labels, Metric, Number
from collector.metrics.snapshot import Failures, snapshot

__all__ = ["OtlpMetrics", "metrics_data"]

log = logging.getLogger("llmtap.metrics")

#: Longest one export may take (the exporter's retries included).
EXPORT_TIMEOUT_S = 10.0


def _attributes(labels: Labels) -> dict[str, str]:
    return {ATTRIBUTES[name]: value for name, value in labels if value is not None and value != ""}


def _value(value: Number) -> int | float:
    """A sum as OTLP carries it: counts as integers, money and ratios as doubles."""
    if value is None:
        return 0
    if isinstance(value, Decimal):
        return float(value)
    return value


def metrics_data(metrics: Sequence[Metric], start_ns: int, now_ns: int) -> MetricsData:
    """``metrics`` as the SDK's ``MetricsData`` (one resource, ``service.name`` llmtap; one
    scope, llmtap), every point cumulative since ``start_ns``, read at ``now_ns``."""
    cumulative = AggregationTemporality.CUMULATIVE
    sent = []
    for metric in metrics:
        data: Any
        if metric.kind == "histogram":
            points: list[Any] = []
            for series in metric.series:
                histogram = series.value
                assert isinstance(histogram, Histogram)
                counts = [*histogram.cumulative, histogram.count]
                points.append(
                    HistogramDataPoint(
                        attributes=_attributes(series.labels),
                        start_time_unix_nano=start_ns,
                        time_unix_nano=now_ns,
                        count=histogram.count,
                        sum=_value(histogram.total),
                        # OTLP counts per bucket, Prometheus cumulatively.
                        bucket_counts=[counts[0], *(b - a for a, b in itertools.pairwise(counts))],
                        explicit_bounds=[float(bound) for bound in histogram.bounds],
                        min=None,  # type: ignore[arg-type]  # optional in OTLP: left unset
                        max=None,  # type: ignore[arg-type]
                    )
                )
            data = OtlpHistogram(points, cumulative)
        else:
            numbers = [
                NumberDataPoint(
                    attributes=_attributes(series.labels),
                    start_time_unix_nano=start_ns,
                    time_unix_nano=now_ns,
                    value=_value(series.value),  # type: ignore[arg-type]  # not a Histogram here
                )
                for series in metric.series
            ]
            data = Sum(numbers, cumulative, is_monotonic=True) if metric.kind == "counter" else Gauge(numbers)
        sent.append(OtlpMetric(metric.otel_name, metric.help, metric.unit, data))
    scope = ScopeMetrics(InstrumentationScope("llmtap"), sent, "")
    resource = Resource.create({"service.name": "llmtap"})
    return MetricsData([ResourceMetrics(resource, [scope], "")])


class OtlpMetrics:
    """Pushes the store's metrics to an OTLP/HTTP metrics URL from a daemon thread. Imported only
    by a proxy that exports: the SDK's metrics modules stay out of the others."""

    def __init__(self, db: Path, url: str, interval_s: float, budgets: Sequence[Budget] = ()) -> None:
        self.db = db
        self.url = url
        self.interval_s = interval_s
        self.budgets = tuple(budgets)
        self.bounds = LabelBounds()
        self._exporter = OTLPMetricExporter(endpoint=url, timeout=EXPORT_TIMEOUT_S)
        self._failures = Failures(log, "llmtap's OTLP metrics")
        self._start_ns = time.time_ns()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmtap-otlp-metrics", daemon=True)

    def start(self) -> OtlpMetrics:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.export()

    def export(self) -> bool:
        """Read the store and send one export; False (logged) if either failed."""
        try:
            metrics, _ = snapshot(self.db, self.bounds, self.budgets)
            data = metrics_data(metrics, self._start_ns, time.time_ns())
            result = self._exporter.export(data, timeout_millis=EXPORT_TIMEOUT_S * 1000)
            if result is not MetricExportResult.SUCCESS:
                raise ConnectionError("the OTLP endpoint refused the export or did not answer")
        except Exception as exc:
            self._failures.failed(exc)
            return False
        self._failures.worked()
        return True

    def stop(self) -> None:
        """Stop the interval and send a last reading (the calls of the proxy's last moments)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(EXPORT_TIMEOUT_S + 10)
        self.export()
        self._exporter.shutdown()
