"""The Streamlit dashboard (``llmtap ui``): Overview, Costs, Latency, Calls, Budgets and
Recommendations pages over the :mod:`analytics` API.

:mod:`app.ui.data` holds each page's data as plain functions (shared with the tests and
``bench/dashboard.py``); :mod:`app.ui.widgets` the sidebar, caching and empty states;
``dashboard.py`` is the Streamlit entry point and ``page_scripts/`` its pages (not
``pages/``: Streamlit would also serve that folder's scripts on their own, without the
sidebar, to a page URL opened before the entry point first ran).
"""
