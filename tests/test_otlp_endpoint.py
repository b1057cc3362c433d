"""Where spans are exported: the config's ``otlp_endpoint`` and the OpenTelemetry variables.

The OTLP exporter spec: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` takes precedence over
``OTEL_EXPORTER_OTLP_ENDPOINT`` and is used as is, while the shared endpoint gets the
signal's path (``/v1/traces``) appended; an empty variable counts as unset. (The end-to-end
export to such a URL is in tests/test_spans.py.)
"""

from __future__ import annotations

import pytest

from collector.settings.config import ConfigError, load_settings, otlp_metrics_interval, otlp_url

TRACES = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
SHARED = "OTEL_EXPORTER_OTLP_ENDPOINT"


@pytest.mark.parametrize(
    ("configured", "environ", "expected"),
    [
        (None, {}, None),
        (None, {SHARED: "http://col:4318"}, "http://col:4318/v1/traces"),
        (None, {SHARED: "http://col:4318/base/"}, "http://col:4318/base/v1/traces"),
        (None, {SHARED: "http://col:4318/v1/traces"}, "http://col:4318/v1/traces"),
        (None, {TRACES: "http://col:4318/custom/path"}, "http://col:4318/custom/path"),  # as is
        (None, {TRACES: "http://col:4318"}, "http://col:4318"),
        (None, {TRACES: "http://t:1/x", SHARED: "http://s:2"}, "http://t:1/x"),  # traces wins
        (None, {TRACES: "", SHARED: "http://s:2"}, "http://s:2/v1/traces"),  # empty is unset
        (None, {TRACES: " ", SHARED: ""}, None),
        ("http://cfg:4318", {TRACES: "http://t:1/x", SHARED: "http://s:2"}, "http://cfg:4318/v1/traces"),
    ],
)
def test_otlp_traces_url(configured, environ, expected):
    assert otlp_url("traces", configured, environ) == expected


def test_settings_take_the_traces_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(SHARED, raising=False)
    monkeypatch.setenv(TRACES, "http://127.0.0.1:4318/otel/spans")
    settings = load_settings(data_dir=str(tmp_path))
    assert settings.otlp_endpoint == "http://127.0.0.1:4318/otel/spans"
    config = tmp_path / "llmtap.toml"
    config.write_text('otlp_endpoint = "http://127.0.0.1:9999"\n')
    assert load_settings(data_dir=str(tmp_path), config_file=str(config)).otlp_endpoint == (
        "http://127.0.0.1:9999/v1/traces"
    )


METRICS = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"


@pytest.mark.parametrize(
    ("configured", "environ", "expected"),
    [
        (None, {}, None),
        (None, {SHARED: "http://col:4318"}, "http://col:4318/v1/metrics"),
        (
            None,
            {SHARED: "http://col:4318/v1/traces"},
            "http://col:4318/v1/metrics",
        ),  # a signal's path replaced
        (None, {TRACES: "http://t:1/x"}, None),  # the traces variable is for spans only
        (None, {METRICS: "http://m:1/custom", SHARED: "http://s:2"}, "http://m:1/custom"),  # as is, and wins
        (None, {METRICS: "", SHARED: "http://s:2/"}, "http://s:2/v1/metrics"),
        ("http://cfg:4318/v1/traces", {METRICS: "http://m:1/x"}, "http://cfg:4318/v1/metrics"),  # config wins
        ("http://cfg:4318", {"OTEL_METRICS_EXPORTER": "none"}, None),  # metrics turned off
        (None, {SHARED: "http://s:2", "OTEL_METRICS_EXPORTER": " None "}, None),
        (None, {SHARED: "http://s:2", "OTEL_METRICS_EXPORTER": "otlp"}, "http://s:2/v1/metrics"),
    ],
)
def test_otlp_metrics_url(configured, environ, expected):
    assert otlp_url("metrics", configured, environ) == expected


def test_metrics_interval():
    assert otlp_metrics_interval({}) == 60.0
    assert otlp_metrics_interval({"OTEL_METRIC_EXPORT_INTERVAL": "1500"}) == 1.5
    for bad in ("soon", "0", "-5", "nan", "1e12"):
        with pytest.raises(ConfigError, match="OTEL_METRIC_EXPORT_INTERVAL takes the milliseconds"):
            otlp_metrics_interval({"OTEL_METRIC_EXPORT_INTERVAL": bad})
