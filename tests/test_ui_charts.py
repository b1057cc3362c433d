"""The dashboard's charts label time on a 24-hour clock (Vega's default is a 12-hour one
without AM/PM, so 21:01 read as 09:01), and take any category name, however odd."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from app.ui import charts, data

#: One bucket at 21:01 UTC.
FRAME = pl.DataFrame(
    {
        "bucket": [datetime(2025, 3, 5, 21, 1, tzinfo=UTC)],
        "model": ["gpt-4o"],
        "cost_usd": [1.5],
        "latency_p50_ms": [850.0],
    }
)
BUCKET_NAMES = [name for _, _, name in data.BUCKETS] + [data.LONGEST_BUCKET[1]]


def time_axis_format(chart) -> str:
    x = chart.to_dict()["encoding"]["x"]
    assert x["type"] == "temporal"
    return x["axis"]["format"]


@pytest.mark.parametrize("bucket", BUCKET_NAMES)
def test_time_axes_use_a_24_hour_clock(bucket: str) -> None:
    for chart in (
        charts.spend_over_time(FRAME, bucket),
        charts.lines_over_time(FRAME, "latency_p50_ms", "latency p50 (ms)", bucket),
    ):
        fmt = time_axis_format(chart)
        assert "%I" not in fmt and "%p" not in fmt, fmt
        if bucket in ("minute", "10 minutes", "hour"):
            assert "%H:%M" in fmt, fmt
        if bucket != "minute":  # spans of more than 3 hours say which day
            assert "%d" in fmt, fmt


def test_ranked_bars_take_any_category_name() -> None:
    """A property key is anyone's choice: colons, dots and brackets must not break the chart."""
    key = "![b](http://127.0.0.1:9/x.y):N"
    frame = pl.DataFrame({charts.CATEGORY: ["a", "b"], "cost_usd": [2.0, 1.0]})
    spec = charts.ranked_bars(frame, key, "cost_usd", "cost (USD)", money=True).to_dict()
    assert spec["encoding"]["y"]["field"] == charts.CATEGORY
    assert spec["encoding"]["tooltip"][0]["title"] == key
