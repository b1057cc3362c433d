"""app.ui.safe: traffic text rendered by a CommonMark parser (markdown-it, with raw HTML,
tables and strikethrough on: stricter than Streamlit, which shows raw HTML as text) comes
out as exactly that text, in one paragraph, with no link, image, emphasis or HTML, and
control characters show as escapes.
"""

from __future__ import annotations

import html
import re

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ui.safe import WORD_JOINER, md, printable, printable_frame, printable_tree

markdown_it = pytest.importorskip("markdown_it")
RENDER = markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render

HOSTILE = [
    "![b](http://127.0.0.1:9/beacon-model)",
    "<img src=http://127.0.0.1:9/x>",
    "[click](javascript:alert(1)) <https://example.com> &lt;b&gt; &#33;",
    "*em* **strong** _u_ ~~s~~ `code` $x^2$ :red[red] :material/home: \\*",
    "# heading",
    "- item",
    "1. first",
    "> quote",
    "| a | b |\n|---|---|\n| c | d |",
    "---",
    "line\n===",
    "    indented *x*",
    "first\n\n    \tindented [a](b)\n\n\n<div>\n![b](u)",
]


def rendered_text(markdown: str) -> tuple[list[str], str]:
    """The HTML tags markdown-it produces for ``markdown``, and its text (entities decoded)."""
    out = RENDER(markdown)
    return re.findall(r"</?([a-z0-9]+)", out), html.unescape(re.sub(r"<[^>]+>", "", out))


def words(text: str) -> str:
    """``text`` as a browser shows it: whitespace collapsed, word joiners invisible."""
    return " ".join(text.replace(WORD_JOINER, "").split())


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_markdown_and_html_render_as_their_literal_text(text: str) -> None:
    tags, shown = rendered_text(md(text))
    assert set(tags) <= {"p"}, tags
    assert words(shown) == words(text)


#: Any text, weighted towards Markdown's syntax and whitespace.
TEXT = st.text(alphabet=st.one_of(st.sampled_from(" \n\t*_#-+=.[]()!<>`:$&\\|~^'\"1"), st.characters()))


@given(TEXT)
def test_any_text_renders_as_its_printable_self(text: str) -> None:
    tags, shown = rendered_text(md(text))
    assert set(tags) <= {"p"}, tags
    assert words(shown) == words(printable(text))


def test_urls_and_email_addresses_do_not_become_links() -> None:
    """GitHub-flavoured Markdown links a URL or e-mail address found in the parsed text, escaped
    or not; an invisible word joiner after the scheme or before the ``@`` keeps it text."""
    text = "see http://127.0.0.1:9/x, HTTPS://a.example (www.example.com) or bob@example.com"
    escaped = md(text)
    for trigger in ("http", "HTTPS", "www", "bob"):
        assert f"{trigger}{WORD_JOINER}" in escaped
    assert words(rendered_text(escaped)[1]) == text
    assert WORD_JOINER not in md("xhttp://a wwwx.com daily-total")


def test_control_characters_show_as_escapes() -> None:
    assert printable("a\x1b[31mred\x07\x00\x7f\x85\u202eevil\tend\nnext") == (
        "a\\x1b[31mred\\x07\\x00\\x7f\\x85\\u202eevil\tend\nnext"
    )
    assert printable("one\r\ntwo\rthree") == "one\ntwo\\x0dthree"
    assert md("\x1b") == "\\\\x1b"  # the escape's backslash is itself escaped
    assert rendered_text(md("a\x1bb"))[1].strip() == "a\\x1bb"
    assert printable(None) == "None" and md(42) == "42"


def test_plain_text_elements_get_control_characters_escaped_only() -> None:
    table = pl.DataFrame({"model": ["a\x1bb", "![b](u)", None], "calls": [1, 2, 3]})
    assert printable_frame(table).to_dict(as_series=False) == {
        "model": ["a\\x1bb", "![b](u)", None],
        "calls": [1, 2, 3],
    }
    assert printable_tree({"k\x1b": ["v\x07", 1, None, {"n": "\x9b"}]}) == {
        "k\\x1b": ["v\\x07", 1, None, {"n": "\\x9b"}]
    }
