"""Text from recorded traffic, made inert for display.

App and user names, models, providers, property keys and values, upstream error
messages: anyone who can send a call through the proxy chooses them. Streamlit renders
Markdown (and through it, links and images) in st.markdown, st.write, st.caption, alerts,
headings, metric labels and values, tab, radio, expander and progress labels, so a model
named ``![b](http://host/beacon)`` would make every viewer's browser fetch that URL.

The rule: traffic text reaches a Markdown-rendering element only through :func:`md`;
plain-text elements (st.text, st.code, st.json, dataframes, selectbox and multiselect
options) get :func:`printable`, which only makes control characters visible.
"""

from __future__ import annotations

import re
import string
from typing import Any

import polars as pl

from collector.trust import boundary
from collector.trust.boundary import CONTROL

#: CommonMark lets any ASCII punctuation be backslash-escaped, and an escaped character is
#: never syntax: escaping them all covers Markdown, GFM's tables and strikethrough, raw HTML
#: and entities, and Streamlit's own ``$math$``, ``:emoji:`` and ``:color[directives]``.
PUNCTUATION = re.compile(f"([{re.escape(string.punctuation)}])")
#: What GitHub-flavoured Markdown turns into a link even when escaped (Streamlit finds
#: them in the parsed text): a URL's ``http:``/``https:``/``www.`` and an e-mail's ``@``.
#: A WORD JOINER (U+2060, invisible) after the scheme or before the ``@`` breaks them.
AUTOLINK = re.compile(r"(?i)(?<![a-z0-9])(https?(?=:)|www(?=\.))|(?=@)")
WORD_JOINER = "\u2060"
#: Indentation at a line's start, which would make an indented code block (shown with the
#: escapes' backslashes); a paragraph drops it anyway.
INDENT = re.compile(r"^[ \t]+", re.MULTILINE)
#: Every character :data:`CONTROL` matches, for Polars' replace_many (no regex callbacks).
_CONTROL_CHARS = [chr(c) for c in range(0x2070) if CONTROL.match(chr(c))]


def printable(value: Any) -> str:
    """``value`` as text with control characters spelt as escapes (ESC as ``\\x1b``), so
    they neither vanish nor act on the display (:func:`collector.trust.boundary.printable`)."""
    return boundary.printable(str(value))


def md(value: Any) -> str:
    """``value`` as Markdown that renders as exactly its :func:`printable` text (but for
    indentation, which Markdown drops, and invisible word joiners that keep URLs and
    e-mail addresses from becoming links): every ASCII punctuation character
    backslash-escaped, so nothing in it is Markdown or HTML."""
    text = AUTOLINK.sub(lambda m: (m.group(1) or "") + WORD_JOINER, printable(value))
    return INDENT.sub("", PUNCTUATION.sub(r"\\\1", text))


def printable_tree(value: Any) -> Any:
    """:func:`printable` applied to every string in a JSON-like value (dicts, lists), for
    st.json."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k): printable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_tree(v) for v in value]
    return value


def printable_frame(table: pl.DataFrame) -> pl.DataFrame:
    """``table`` with :func:`printable` applied to its string columns, for st.dataframe
    (which shows text as is, so Markdown is no concern there)."""
    escapes = [boundary.printable(c) for c in _CONTROL_CHARS]
    strings = [name for name, dtype in table.schema.items() if dtype == pl.String]
    return table.with_columns(
        pl.col(strings).str.replace_all("\r\n", "\n", literal=True).str.replace_many(_CONTROL_CHARS, escapes)
    )
