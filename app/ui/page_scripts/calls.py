"""Calls: a filterable table of the latest calls, and one call in detail (its span's
attributes, its bodies as the capture mode stored them, and its scores)."""

import polars as pl
import streamlit as st

from app.ui import widgets
from app.ui.format import count, duration_ms, usd
from app.ui.safe import md, printable, printable_frame, printable_tree

st.title("Calls")
view, _ = widgets.page_view()
errors_only = st.toggle("Only calls with an error", key="errors_only")
matched, latest = widgets.recent_calls(view, errors_only)
if matched == 0:
    widgets.no_calls(view)
    st.stop()

st.caption(f"{count(matched)} calls match; the latest {count(latest.height)} are listed, newest first.")
picked = st.dataframe(
    printable_frame(latest),
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    key="calls_table",
    column_config={
        "started_at": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "cost_usd": st.column_config.NumberColumn("cost", format="$%.6f"),
        "latency_ms": st.column_config.NumberColumn("latency", format="%.0f ms"),
        "ttft_ms": st.column_config.NumberColumn("ttft", format="%.0f ms"),
    },
)
rows = picked.selection.rows if picked is not None else []
ids = latest.get_column("call_id").to_list()
call_id = st.selectbox(
    "Call",
    ids,
    index=rows[0] if rows else 0,
    key="call_id",
    help="or pick a row above",
    format_func=printable,
)

detail = widgets.call_detail(view.store, call_id, view.state)
if detail is None:
    st.warning(f"Call {md(call_id)} is no longer in the store.")
    st.stop()
call = detail.call
model = call["response_model"] or call["request_model"]
st.subheader(f"{md(call['provider'])} {md(call['api'])}: {md(model) if model else '(unknown model)'}")
cells = st.columns(5)
cells[0].metric("Status", str(call["status_code"] or "none"))
cells[1].metric("Latency", duration_ms(call["latency_ms"]))
cells[2].metric("Time to first token", duration_ms(call["ttft_ms"]))
cells[3].metric("Tokens in / out", f"{count(call['input_tokens'])} / {count(call['output_tokens'])}")
cells[4].metric("Call cost", usd(call["cost_usd"]))
if call["error"]:
    st.error(md(call["error"]))

record, span, bodies, scores = st.tabs(["Record", "Span", "Bodies", "Scores"])
with record:
    st.json(
        printable_tree(
            {
                name: value if isinstance(value, (str, int, float, bool, type(None), list)) else str(value)
                for name, value in call.items()
            }
        )
    )
with span:
    if detail.span is None:
        st.info("No span stored for this call.")
    else:
        name, trace, span_id, status = (md(detail.span[k]) for k in ("name", "trace_id", "span_id", "status"))
        st.caption(f"{name} (trace {trace}, span {span_id}, status {status})")
        st.json(printable_tree(detail.span["attributes"] or {}))
with bodies:
    if detail.bodies is None and call.get("node"):
        st.info(f"The fleet store keeps no bodies: they stay with node {md(call['node'])}'s sidecar.")
    elif detail.bodies is None:
        st.info("No bodies stored for this call.")
    else:
        mode = detail.bodies["capture_mode"]
        st.caption(
            f"capture mode: {md(mode)}"
            + (" (bodies are not kept in this mode)" if mode == "metadata" else "")
        )
        for part in ("request_body", "response_body"):
            st.markdown(f"**{part.replace('_', ' ')}**")
            if detail.bodies[part]:
                st.code(printable(detail.bodies[part]), language="json")
            else:
                st.caption("not stored")
with scores:
    if detail.scores.is_empty():
        st.info(
            "No scores for this call: graders in the config (`[graders.NAME]`) score answers, and the "
            "app can post feedback (see `llmtap feedback --help`)."
        )
    else:
        st.dataframe(
            printable_frame(detail.scores),
            hide_index=True,
            column_config={
                "value": st.column_config.NumberColumn("value", format="%.3f", help="from 0 to 1"),
                "created_at": st.column_config.DatetimeColumn("scored (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                "error": st.column_config.TextColumn("error", help="why a grader could not score"),
            },
        )
        for failed in detail.scores.filter(pl.col("value").is_null()).iter_rows(named=True):
            reason = md(failed["error"] or "no reason given")
            st.warning(f"Grader {md(failed['name'])} could not score this call: {reason}")
