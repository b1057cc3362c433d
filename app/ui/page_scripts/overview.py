"""Overview: spend today, this week and this month against budgets; calls, tokens, error
rate and latency over the window; spend over time by model."""

import streamlit as st

from app.ui import charts, widgets
from app.ui.format import count, duration_ms, percent, usd
from app.ui.safe import md

PERIOD_LABELS = {"day": "today", "week": "this week", "month": "this month"}
PERIOD_ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly"}

st.title("Overview")
view, settings = widgets.page_view()
widgets.alert_banner(view.data_dir)
overview = widgets.overview(view, settings.budgets, widgets.now_minute())

for column, spend in zip(st.columns(len(overview.periods)), overview.periods, strict=True):
    with column:
        st.metric(
            f"Spend {PERIOD_LABELS[spend.period]}",
            usd(spend.spent_usd or 0),
            help="UTC period; calls without a known price count nothing",
        )
        if spend.limit_usd is not None:
            used = (spend.spent_usd or 0) / spend.limit_usd
            st.progress(
                min(used, 1.0),
                text=f"{percent(used)} of the {usd(spend.limit_usd)} {PERIOD_ADJECTIVES[spend.period]} "
                f"budget {md(spend.budget)}",
            )
        if spend.forecast_usd is not None:
            st.caption(f"forecast for the {spend.period}: {usd(spend.forecast_usd)}")

st.subheader("In the time window")
if overview.calls == 0:
    widgets.no_calls(view)
    st.stop()
cells = st.columns(7)
cells[0].metric("Calls", count(overview.calls))
cells[1].metric("Input tokens", count(overview.input_tokens))
cells[2].metric("Output tokens", count(overview.output_tokens))
cells[3].metric("Cost", usd(overview.cost_usd), help="n/a: no call in the window has a known price")
cells[4].metric(
    "Error rate", percent(overview.error_rate), help=f"{count(overview.errors)} calls with an error"
)
cells[5].metric("Latency p50", duration_ms(overview.latency_p50_ms), help="over calls without error")
cells[6].metric("Latency p95", duration_ms(overview.latency_p95_ms), help="over calls without error")

st.subheader("Spend over time")
if overview.spend_over_time.get_column("cost_usd").is_null().all():
    st.info("None of these calls has a known price yet: see Costs for the unpriced models.")
else:
    st.altair_chart(charts.spend_over_time(overview.spend_over_time, overview.bucket), width="stretch")
