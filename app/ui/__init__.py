"""The Streamlit dashboard (``llmtap ui``): Overview, Costs, Latency, Calls, Budgets and
Recommendations pages over the :mod:`analytics` API.

:mod:`app.ui.data` holds each page's data as plain functions (shared with the tests and
``bench/dashboard.py``); :mod:`app.ui.widgets` the sidebar, caching and empty states;
``dashboard.py`` is the Streamlit entry point and ``pages/`` the pages.
"""
