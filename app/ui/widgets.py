"""What every page shares: the sidebar (time window, filters), the store watch that keeps
pages live, cached faces of :mod:`app.ui.data`, empty states and the alert banner.

``llmtap ui`` passes the data directory, config file and store in the environment
(``LLMTAP_DATA_DIR``, ``LLMTAP_CONFIG``, ``LLMTAP_STORE``), so the app, AppTest and a plain
``streamlit run app/ui/dashboard.py`` all start the same way.

Caching: results are cached per :class:`~app.ui.data.View`, which holds the store's
state (:meth:`analytics.engines.Reader.state`: size and mtime of a local file and its WAL,
the fleet's latest call and row counts). A new call changes the state, so the
next run computes afresh; :func:`watch_store` reruns the page within ``REFRESH_S`` of a
change, without a manual reload. The TTL only bounds memory and the clock's effect
(today's spend at midnight).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import streamlit as st

from analytics.engines import STORE_ENV, FleetStoreError, reader
from app.ui import budget_status, data, recommendations_data
from app.ui.format import count, usd
from app.ui.launch import CONFIG_ENV
from app.ui.safe import md, printable
from collector.settings.config import BudgetSpec, Settings, load_settings

REFRESH_S = 5
CACHE_TTL_S = 60
VIEW_KEY = "llmtap_view"
SETTINGS_KEY = "llmtap_settings"


def load_config() -> Settings:
    """Settings from ``$LLMTAP_CONFIG`` (if set) and ``$LLMTAP_DATA_DIR`` (which wins over the
    config's ``data_dir``, as ``--data-dir`` does); ConfigError when bad."""
    return load_settings(
        data_dir=os.environ.get("LLMTAP_DATA_DIR") or None, config_file=os.environ.get(CONFIG_ENV) or None
    )


def store_of(settings: Settings) -> str:
    """The store the dashboard reads: ``$LLMTAP_STORE`` (``llmtap ui --store``), else the local
    store of the data directory."""
    return os.environ.get(STORE_ENV) or str(settings.paths.db)


def now_minute() -> datetime:
    """The current UTC time to the minute: the clock's part of cache keys."""
    return datetime.now(UTC).replace(second=0, microsecond=0)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def filter_options(store: str, since: datetime | None, state: tuple[int, ...]) -> dict[str, list[str]]:
    return data.filter_options(store, since)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Reading the store...")
def overview(view: data.View, budgets: tuple[BudgetSpec, ...], minute: datetime) -> data.Overview:
    """``minute`` (:func:`now_minute`) only keys the cache on the clock: the figures are taken
    at the current time, so the current periods' spend counts this minute's calls as the
    window's cost does (a new call changes ``view.state`` and so recomputes)."""
    return data.overview(view, budgets)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Reading the store...")
def costs(view: data.View) -> data.Costs:
    return data.costs(view)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Reading the store...")
def latency(view: data.View) -> data.Latency:
    return data.latency(view)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Reading the store...")
def recent_calls(view: data.View, errors_only: bool) -> tuple[int, pl.DataFrame]:
    return data.recent_calls(view, errors_only)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def call_detail(store: str, call_id: str, state: tuple[int, ...]) -> data.CallDetail | None:
    return data.call_detail(store, call_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Reading the store...")
def budgets(
    store: str, specs: tuple[BudgetSpec, ...], minute: datetime, state: tuple[int, ...]
) -> pl.DataFrame:
    """As :func:`overview`: ``minute`` keys the cache; spend counts calls up to now."""
    return budget_status.budget_status(store, specs)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def blocked(view: data.View) -> pl.DataFrame:
    return budget_status.blocked_calls(view.calls())


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Running the routing recommender...")
def recommendations(view: data.View, settings: Settings) -> recommendations_data.Routing:
    return recommendations_data.routing(view, settings)


def sidebar(settings: Settings) -> data.View:
    """The sidebar's controls, and the View they choose (also kept for the pages)."""
    store = store_of(settings)
    try:
        state = data.store_state(store)
    except FleetStoreError as exc:  # the fleet's database is down or refuses: say so, once
        st.error(md(exc))
        st.stop()
    st.sidebar.caption(f"Store: `{reader(store).label}`")
    label = st.sidebar.selectbox(
        "Time window", list(data.WINDOWS), index=list(data.WINDOWS).index(data.DEFAULT_WINDOW), key="window"
    )
    since = data.window_start(label, now_minute())
    options = filter_options(store, since, state) if state else {}
    chosen = {
        name: tuple(
            st.sidebar.multiselect(
                name.capitalize(),
                options.get(name, []),
                key=f"filter_{name}",
                placeholder="All",
                format_func=printable,
            )
        )
        for name in data.FILTER_COLUMNS
        # One node (or none: a local store) is nothing to choose between.
        if name != "node" or len(options.get(name, [])) > 1
    }
    view = data.View(
        data_dir=settings.data_dir, store=store, since=since, filters=data.Filters(**chosen), state=state
    )
    st.session_state[VIEW_KEY] = view
    st.session_state[SETTINGS_KEY] = settings
    watch_store(store, state)
    return view


@st.fragment(run_every=REFRESH_S)
def watch_store(store: str, state: tuple[int, ...]) -> None:
    """Rerun the whole app when the store changed since this run (new calls arrived), or can no
    longer be read (the sidebar then says why)."""
    try:
        changed = data.store_state(store) != state
    except FleetStoreError:
        changed = True
    if changed:
        st.rerun()


def page_view() -> tuple[data.View, Settings]:
    """The sidebar's View and the settings, for a page; stops with a helpful message when
    there is no store yet."""
    view: data.View = st.session_state[VIEW_KEY]
    settings: Settings = st.session_state[SETTINGS_KEY]
    if not view.state:
        st.info(
            f"No llmtap store at `{view.reader.label}` yet. Start the proxy (`llmtap proxy`, or "
            "`llmtap run -- CMD`) and make a call; this page updates by itself. "
            "Another data directory? Start the dashboard with `llmtap ui --data-dir DIR`."
        )
        st.stop()
    return view, settings


def no_calls(view: data.View) -> None:
    """The empty state of a page whose window (and filters) hold no calls."""
    where = "with these filters " if view.filters.active() else ""
    st.info(
        f"No calls {where}in this time window. Widen the window or clear the filters in the "
        "sidebar; new calls appear here within a few seconds of the proxy recording them."
    )


def alert_text(alert: dict) -> str:
    """One alert as the proxy words it (its message names apps, users, property values:
    traffic text), as inert Markdown."""
    return md(alert.get("message") or f"budget {alert.get('budget')}: {usd(alert.get('spent_usd'))} spent")


def alert_banner(data_dir: Path) -> None:
    """The proxy's current budget alerts as ONE banner (an error when any is exceeded), so
    many alerts do not push the page's figures off screen: a single alert is shown whole;
    several are summarised, the most severe named, and all listed in an expander below."""
    try:
        alerts = budget_status.read_alerts(data_dir)
    except ValueError as exc:
        st.error(md(exc))
        return
    if not alerts:
        return
    alerts = sorted(alerts, key=lambda a: -(a.get("level") or 0))
    exceeded = sum(bool(a.get("exceeded")) for a in alerts)
    show = st.error if exceeded else st.warning
    if len(alerts) == 1:
        show(alert_text(alerts[0]))
        return
    total = count(len(alerts))
    show(f"{total} budgets alerting, {count(exceeded)} exceeded. Most severe: {alert_text(alerts[0])}")
    with st.expander(f"All {total} budget alerts"):
        st.markdown(
            "\n".join(f"- {'exceeded' if a.get('exceeded') else 'alert'}: {alert_text(a)}" for a in alerts)
        )
