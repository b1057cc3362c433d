"""The Streamlit entry point of ``llmtap ui``: the sidebar, then the chosen page.

Run by ``llmtap ui`` (``streamlit run``), by AppTest in the tests, or directly with
``LLMTAP_DATA_DIR=DIR streamlit run app/ui/dashboard.py``.
"""

from pathlib import Path

import streamlit as st

from app.ui import widgets
from app.ui.safe import md
from collector.settings.config import ConfigError

PAGES = Path(__file__).resolve().parent / "page_scripts"

st.set_page_config(page_title="llmtap", layout="wide")
try:
    settings = widgets.load_config()
except ConfigError as exc:
    st.title("llmtap")
    st.error(f"Cannot read the config: {md(exc)}")
    st.stop()
widgets.sidebar(settings)
st.navigation(
    [
        st.Page(PAGES / "overview.py", title="Overview", default=True),
        st.Page(PAGES / "costs.py", title="Costs"),
        st.Page(PAGES / "latency.py", title="Latency"),
        st.Page(PAGES / "calls.py", title="Calls"),
        st.Page(PAGES / "budgets.py", title="Budgets"),
        st.Page(PAGES / "recommendations.py", title="Recommendations"),
    ]
).run()
