"""llmtap's log output: one set-up for the command line and the loader child, secrets masked.

Log lines carry outside values (hosts, errors, header values a library prints at debug
level), so each line crosses the boundary (:func:`collector.trust.boundary.log_line`) as it is
formatted: at any verbosity no secret header value, ``key=`` query parameter or key-like
string is written, and no control character reaches the terminal.
"""

from __future__ import annotations

import logging
import sys

from collector.trust.boundary import log_line

__all__ = ["MaskingFormatter", "setup"]

#: Loggers kept at WARNING even with ``-v``: their debug output is about their own
#: internals, and hpack's prints every HTTP/2 header it encodes or decodes (Authorization
#: included), partly Huffman-coded where no mask could find it.
QUIET = ("mitmproxy", "asyncio", "httpx", "httpcore", "hpack", "h2", "urllib3")
FORMAT = "llmtap: %(levelname)s %(message)s"


class MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return log_line(super().format(record))


def setup(verbose: bool = False) -> None:
    """Log to stderr, at DEBUG with ``verbose``, every line masked."""
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h.formatter, MaskingFormatter)]:
        root.removeHandler(previous)  # set up again (a second command in one process)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
