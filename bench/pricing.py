"""How much pricing costs per call: the first catalogue lookup of a model, then cached calls.

    uv run python bench/pricing.py [--markdown]

The proxy prices every call on the request path, so the cached figure is the one that
matters (target: under 10 us).
"""

from __future__ import annotations

import argparse
import time
import timeit
from datetime import UTC, datetime

from collector.pricing.book import PriceBook
from collector.providers.base import Usage

CASES = [
    ("openai", "gpt-4o-mini-2024-07-18", Usage(1149, 353, cache_read_tokens=1024)),
    (
        "anthropic",
        "claude-sonnet-4-5-20250929",
        Usage(1532, 33, cache_read_tokens=1111, cache_write_tokens=418),
    ),
    ("google", "gemini-2.5-pro", Usage(250_000, 1256, reasoning_tokens=787)),
    ("openai", "no-such-model", Usage(10, 10)),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    when = datetime.now(UTC)
    started = time.perf_counter()
    book = PriceBook()
    load_s = time.perf_counter() - started
    rows = []
    for prices_id, model, usage in CASES:
        kw = dict(
            prices_id=prices_id,
            model=model,
            usage=usage,
            service_tier=None,
            provider_cost_usd=None,
            when=when,
        )
        started = time.perf_counter()
        book.price(**kw)
        first_us = (time.perf_counter() - started) * 1e6
        n = 20_000
        cached_us = timeit.timeit(lambda kw=kw: book.price(**kw), number=n) / n * 1e6
        rows.append((f"{prices_id}/{model}", f"{first_us:.0f}", f"{cached_us:.1f}"))
    header = ("model", "first lookup (us)", "cached price() (us)")
    if args.markdown:
        print(f"PriceBook() load: {load_s * 1000:.0f} ms\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        print(f"PriceBook() load: {load_s * 1000:.0f} ms")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        for row in [header, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
