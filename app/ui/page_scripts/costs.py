"""Costs: spend by model, provider, app, user and property; cache savings (prompt caches, and
llmtap's response cache beside the repeated requests a cache could have served); unpriced models."""

import polars as pl
import streamlit as st

from app.ui import charts, data, widgets
from app.ui.format import count, usd
from app.ui.safe import md, printable, printable_frame

st.title("Costs")
view, _ = widgets.page_view()
costs = widgets.costs(view)
if not costs.by["model"].height or costs.by["model"].get_column("calls").sum() == 0:
    widgets.no_calls(view)
    st.stop()

cells = st.columns(3)
cells[0].metric("Cost", usd(costs.total_usd), help="n/a: no call in the window has a known price")
cells[1].metric(
    "Saved by prompt caching", usd(costs.cache_saved_usd), help="cache reads' saving minus writes' premium"
)
cells[2].metric("Unpriced models", count(costs.unpriced.height), help="models with usage but no known price")

MONEY = ("cost_usd",)


def spend_table(frame: pl.DataFrame, label: str) -> None:
    """A breakdown: a bar chart of cost and the table behind it. The table's first column
    is named ``label`` ("property:team" -> "team") unless another column has that name
    (a property key is anyone's choice, "calls" too); the chart reads it as a fixed field,
    as Altair would parse a name's colons and dots."""
    name = printable(label.lower())
    name = frame.columns[0] if name in frame.columns[1:] else name
    frame = frame.rename({frame.columns[0]: name}).with_columns(pl.col(MONEY).cast(pl.Float64))
    if frame.get_column("cost_usd").is_not_null().any():
        top = frame.head(20).rename({name: charts.CATEGORY})
        st.altair_chart(charts.ranked_bars(top, name, "cost_usd", "cost (USD)", money=True), width="stretch")
    st.dataframe(
        printable_frame(frame),
        hide_index=True,
        column_config={
            "cost_usd": st.column_config.NumberColumn("cost", format="dollar"),
            **{
                c: st.column_config.NumberColumn(c.replace("_", " "), format="localized")
                for c in frame.columns[1:]  # the first is the breakdown's, a name like "api_calls" too
                if c.endswith(("tokens", "calls"))
            },
        },
    )


properties = [name for name in costs.by if name.startswith("property:")]
labels = [*data.COST_DIMENSIONS, *(name.removeprefix("property:") for name in properties)]
for tab, label, name in zip(
    st.tabs([md(label) for label in labels]),
    labels,
    [*data.COST_DIMENSIONS.values(), *properties],
    strict=True,
):
    with tab:
        spend_table(costs.by[name], label)

st.subheader("Prompt caching")
st.dataframe(
    printable_frame(costs.cache),
    hide_index=True,
    column_config={
        "cache_read_share": st.column_config.NumberColumn("cache read share", format="percent"),
        **{
            c: st.column_config.NumberColumn(c.replace("_", " "), format="dollar")
            for c in costs.cache.columns
            if c.endswith("usd")
        },
    },
)

st.subheader("Response cache")
saved, still_paid = st.columns(2)
saved.metric(
    "Saved by the response cache",
    usd(costs.response_cache_saved_usd or 0),
    help="what the answers llmtap's response cache served would have cost from the provider",
)
still_paid.metric(
    "Repeated requests still paid for",
    usd(costs.duplicate_cost_usd or 0),
    help="requests answered successfully before and paid for again: what an exact-match cache "
    "would have saved beyond its hits (an upper bound for answers sampled at a temperature above 0)",
)
st.dataframe(
    printable_frame(costs.response_cache),
    hide_index=True,
    column_config={
        "cache_hit_rate": st.column_config.NumberColumn("hit rate", format="percent"),
        **{
            c: st.column_config.NumberColumn(c.replace("_", " "), format="dollar")
            for c in costs.response_cache.columns
            if c.endswith("usd")
        },
    },
)

st.subheader("Models with no known price")
if costs.unpriced.height:
    st.caption(
        "Their cost is n/a, never $0. Add them under `[prices]` in the config and run "
        "`llmtap reprice --config FILE`."
    )
    st.dataframe(printable_frame(costs.unpriced), hide_index=True)
else:
    st.caption("Every call with usage has a price.")
