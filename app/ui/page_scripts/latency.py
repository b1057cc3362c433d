"""Latency: percentiles and time to first token by model, and over time."""

import streamlit as st

from app.ui import charts, widgets
from app.ui.format import duration_ms
from app.ui.safe import printable_frame

st.title("Latency")
view, _ = widgets.page_view()
latency = widgets.latency(view)
if latency.by_model.get_column("ok_calls").sum() == 0:
    widgets.no_calls(view)
    st.stop()

cells = st.columns(3)
cells[0].metric("Latency p50", duration_ms(latency.latency_p50_ms), help="over calls without error")
cells[1].metric("Latency p95", duration_ms(latency.latency_p95_ms), help="over calls without error")
cells[2].metric(
    "Time to first token p50", duration_ms(latency.ttft_p50_ms), help="over streams without error"
)

st.subheader("By model")
milliseconds = {
    c: st.column_config.NumberColumn(c.replace("_", " "), format="%.0f ms")
    for c in latency.by_model.columns
    if c.endswith("_ms")
}
st.dataframe(printable_frame(latency.by_model), hide_index=True, column_config=milliseconds)

st.subheader("Over time")
for value, title in (
    ("latency_p50_ms", "latency p50 (ms)"),
    ("latency_p95_ms", "latency p95 (ms)"),
    ("ttft_p50_ms", "time to first token p50 (ms)"),
):
    st.altair_chart(charts.lines_over_time(latency.over_time, value, title, latency.bucket), width="stretch")
