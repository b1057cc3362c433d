"""The dashboard's Altair charts: small functions of a frame, one chart each.

Times on the x axis are UTC buckets (see :func:`app.ui.data.bucket_for`); money is in
dollars, durations in milliseconds.
"""

from __future__ import annotations

import altair as alt
import polars as pl

USD_AXIS = "$,.2f"
USD_TOOLTIP = "$,.4f"
TIME_TOOLTIP = "%Y-%m-%d %H:%M"
#: Time axis labels per bucket (app.ui.data.BUCKETS), always on a 24-hour clock: Vega's
#: default labels use a 12-hour clock without AM/PM, so 21:01 read as 09:01. Minute
#: buckets span at most 3 hours (the time is enough); longer spans name the day.
TIME_AXIS = {"minute": "%H:%M", "10 minutes": "%b %d %H:%M", "hour": "%b %d %H:%M"}
DAY_AXIS = "%b %d"
#: The column of :func:`ranked_bars`' categories: a fixed field name, as Altair would parse
#: the colons and dots of a category's own name (a property key is anyone's choice).
CATEGORY = "category"


def _time_axis(bucket: str) -> alt.X:
    return alt.X(
        "bucket:T",
        title=f"time (UTC, per {bucket})",
        axis=alt.Axis(format=TIME_AXIS.get(bucket, DAY_AXIS), formatType="time"),
    )


def spend_over_time(frame: pl.DataFrame, bucket: str) -> alt.Chart:
    """Cost per time bucket, as bars stacked by model."""
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=_time_axis(bucket),
            y=alt.Y("cost_usd:Q", title="cost (USD)", stack="zero", axis=alt.Axis(format=USD_AXIS)),
            color=alt.Color("model:N", title="model"),
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format=TIME_TOOLTIP),
                "model:N",
                alt.Tooltip("cost_usd:Q", title="cost", format=USD_TOOLTIP),
            ],
        )
    )


def ranked_bars(frame: pl.DataFrame, label: str, value: str, title: str, money: bool) -> alt.Chart:
    """One horizontal bar per :data:`CATEGORY` (what ``label`` names), biggest ``value`` on top."""
    fmt = USD_AXIS if money else ",.0f"
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X(f"{value}:Q", title=title, axis=alt.Axis(format=fmt)),
            y=alt.Y(f"{CATEGORY}:N", title=None, sort="-x"),
            tooltip=[
                alt.Tooltip(f"{CATEGORY}:N", title=label),
                alt.Tooltip(f"{value}:Q", title=title, format=USD_TOOLTIP if money else ","),
            ],
        )
    )


def lines_over_time(frame: pl.DataFrame, value: str, title: str, bucket: str) -> alt.Chart:
    """``value`` (milliseconds) per time bucket, one line per model."""
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=_time_axis(bucket),
            y=alt.Y(f"{value}:Q", title=title),
            color=alt.Color("model:N", title="model"),
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format=TIME_TOOLTIP),
                "model:N",
                alt.Tooltip(f"{value}:Q", title=title, format=",.0f"),
            ],
        )
    )
