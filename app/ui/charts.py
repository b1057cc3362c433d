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


def _time_axis(bucket: str) -> alt.X:
    return alt.X("bucket:T", title=f"time (UTC, per {bucket})")


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


def ranked_bars(frame: pl.DataFrame, category: str, value: str, title: str, money: bool) -> alt.Chart:
    """One horizontal bar per ``category``, biggest ``value`` on top."""
    fmt = USD_AXIS if money else ",.0f"
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X(f"{value}:Q", title=title, axis=alt.Axis(format=fmt)),
            y=alt.Y(f"{category}:N", title=None, sort="-x"),
            tooltip=[
                f"{category}:N",
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
