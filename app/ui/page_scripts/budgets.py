"""Budgets: each configured budget's spend against its limit, burn rate and forecast in
its current period; the proxy's alerts; the calls budgets blocked."""

import polars as pl
import streamlit as st

from app.ui import widgets
from app.ui.format import count
from app.ui.safe import printable_frame

st.title("Budgets")
view, settings = widgets.page_view()
widgets.alert_banner(view.data_dir)

if not settings.budgets:
    st.info(
        'No budgets configured. Add `[budgets."NAME"]` tables to the TOML config (see the README\'s '
        "Budgets section) and start the proxy and the dashboard with `--config FILE`."
    )
else:
    status = widgets.budgets(view.store, settings.budgets, widgets.now_minute(), view.state)
    over = status.filter(pl.col("used_share") >= 1).height
    forecast_over = status.filter(pl.col("forecast_share") >= 1).height
    cells = st.columns(3)
    cells[0].metric("Budgets", count(len(settings.budgets)))
    cells[1].metric("Totals at their limit", count(over))
    cells[2].metric(
        "Forecast past their limit", count(forecast_over), help="straight line from the last hour's run rate"
    )
    st.dataframe(
        printable_frame(status),
        hide_index=True,
        column_config={
            "used_share": st.column_config.ProgressColumn(
                "used", format="percent", min_value=0.0, max_value=1.0
            ),
            "forecast_share": st.column_config.NumberColumn("forecast / limit", format="percent"),
            "run_rate_usd_per_hour": st.column_config.NumberColumn("burn rate ($/h)", format="dollar"),
            **{
                c: st.column_config.NumberColumn(c.removesuffix("_usd"), format="dollar")
                for c in ("limit_usd", "spent_usd", "forecast_usd")
            },
            "period_end": st.column_config.DatetimeColumn("resets (UTC)", format="YYYY-MM-DD HH:mm"),
        },
    )

st.subheader("Blocked calls")
blocked = widgets.blocked(view)
if blocked.height == 0:
    st.caption("No call was blocked by a budget in this time window.")
else:
    st.metric(
        "Blocked calls",
        count(int(blocked.get_column("blocked_calls").sum())),
        help="answered 429 by the proxy itself",
    )
    st.dataframe(printable_frame(blocked), hide_index=True)
