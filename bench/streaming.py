"""Does llmtap delay a stream? Time to first event and the gaps between events.

    uv run python bench/streaming.py [--markdown] [--streams N] [--events N]

A local upstream (bench/_common.py) answers each streamed chat completion with 200 SSE
events (OpenAI chat chunks) 10 ms apart, on a fixed schedule from its first event. The
client (its own process) times each event's arrival: time to first event (from sending
the request) and every gap between consecutive events, measured directly against the
upstream, through bare mitmproxy (same options and rewrite as llmtap, streaming event
streams) and through the real ``llmtap proxy``, in both client styles (``reverse``: plain
HTTP to the proxy as the API; ``https``: CONNECT + TLS, as with ``HTTPS_PROXY``).

Each connection first makes one plain call (TLS handshake and upstream connection are
not part of the figures), then its streams one after another. The client does not set
``stream_options.include_usage``, so llmtap adds it upstream and strips what it adds from
the stream (its default for OpenAI): the bytes the client receives must be identical in
every path, which is checked.

Targets: llmtap adds at most 1 ms to the time to first event over bare mitmproxy, and the
gaps stay as they are (p50 within 0.2 ms, p99 within 1 ms of bare mitmproxy's).
"""

from __future__ import annotations

import argparse
import time

from _common import Bench, ca_bundle, check_quiet, log, machine_line, percentile, run_streams, table

TARGET_TTFE_MS = 1.0
TARGET_GAP_P50_MS = 0.2
TARGET_GAP_P99_MS = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown")
    parser.add_argument("--streams", type=int, default=6, help="sequential streams, 1 connection (default 6)")
    parser.add_argument(
        "--concurrent", type=int, default=8, help="then this many streams at once (default 8; 0: skip)"
    )
    parser.add_argument("--events", type=int, default=200, help="events per stream (default 200)")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="spacing of events (default 10)")
    parser.add_argument(
        "--ttfe-streams", type=int, default=200, help="short streams timed for the first event (default 200)"
    )
    parser.add_argument("--modes", default="reverse,https", help="client styles (default reverse,https)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    started = time.monotonic()
    quiet = check_quiet()
    rows = []
    ttfe_rows = []
    verdicts = []
    ttfe_verdicts = []
    hashes: set[str] = set()
    llmtap_streams = 0
    with Bench(keep=args.keep) as bench:
        data = bench.tmp / "data"
        bundle = ca_bundle(data)
        upstream = bench.upstream(tls_for=data / "ca")
        up_url = f"http://127.0.0.1:{upstream.port}"
        llmtap = bench.llmtap(data, up_url)
        bare = bench.bare(data / "ca", up_url)
        log("warming up")
        for proc in (bare, llmtap):
            for how in modes:
                run_streams(how, proc.port, 1, 1, ca=bundle, events=5, interval_ms=1)
                llmtap_streams += proc is llmtap
        shapes = [(1, args.streams)]
        if args.concurrent:
            shapes.append((args.concurrent, 1))
        for how in modes:
            direct = (
                ("direct", upstream.port) if how == "reverse" else ("direct-tls", upstream.extra["tls_port"])
            )
            label = "direct to upstream" + (" (TLS)" if how == "https" else "")
            paths = [(label, direct[0], direct[1]), ("bare mitmproxy", how, bare.port)]
            paths.append(("llmtap", how, llmtap.port))
            log(f"{how}: time to first event, {args.ttfe_streams} short streams")
            firsts = {}
            for name, client_how, port in paths:
                r = run_streams(client_how, port, 1, args.ttfe_streams, ca=bundle, events=3, interval_ms=1)
                if name == "llmtap":
                    llmtap_streams += r["streams"]
                ttfe = sorted(r["ttfe_ms"])
                firsts[name] = percentile(ttfe, 50)
                ttfe_rows.append(
                    (
                        how if how != "https" else "https (CONNECT+TLS)",
                        name,
                        f"{percentile(ttfe, 50):.2f}",
                        f"{percentile(ttfe, 90):.2f}",
                        f"{percentile(ttfe, 99):.2f}",
                        f"{ttfe[-1]:.2f}",
                        len(ttfe),
                    )
                )
            added = firsts["llmtap"] - firsts["bare mitmproxy"]
            ttfe_verdicts.append((how, added, added <= TARGET_TTFE_MS))
            for conns, streams in shapes:
                log(f"{how}: {conns} connection(s) x {streams} stream(s)")
                stats = {}
                for name, client_how, port in paths:
                    r = run_streams(
                        client_how,
                        port,
                        conns,
                        streams,
                        ca=bundle,
                        events=args.events,
                        interval_ms=args.interval_ms,
                    )
                    hashes.update(r["hashes"])
                    if name == "llmtap":
                        llmtap_streams += r["streams"]
                    ttfe = sorted(r["ttfe_ms"])
                    stats[name] = r
                    rows.append(
                        (
                            how if how != "https" else "https (CONNECT+TLS)",
                            f"{conns} x {streams}",
                            name,
                            f"{percentile(ttfe, 50):.2f}",
                            f"{ttfe[-1]:.2f}",
                            f"{r['gap_p50_ms']:.2f}",
                            f"{r['gap_p99_ms']:.2f}",
                            f"{r['gap_max_ms']:.2f}",
                            r["events"],
                        )
                    )
                base, ours = stats["bare mitmproxy"], stats["llmtap"]
                d50 = ours["gap_p50_ms"] - base["gap_p50_ms"]
                d99 = ours["gap_p99_ms"] - base["gap_p99_ms"]
                ok = abs(d50) <= TARGET_GAP_P50_MS and d99 <= TARGET_GAP_P99_MS
                verdicts.append((how, conns, streams, d50, d99, ok))
        # The streams llmtap recorded: one row each, with the provider's token counts.
        time.sleep(1.5)
        recorded = stored_streams(data)
    elapsed = time.monotonic() - started

    header = (
        "client",
        "conns x streams",
        "path",
        "first event p50 ms",
        "first event max ms",
        "gap p50 ms",
        "gap p99 ms",
        "gap max ms",
        "events",
    )
    bullet = "- " if args.markdown else ""
    out = [f"{'Machine' if args.markdown else 'machine'}: {machine_line()}; {quiet}", ""]
    out.append(
        f"Time to first event: {args.ttfe_streams} short streams (3 events) one after another on one "
        "keep-alive connection."
    )
    out.append("")
    ttfe_header = ("client", "path", "p50 ms", "p90 ms", "p99 ms", "max ms", "streams")
    out.append(table(ttfe_header, ttfe_rows, args.markdown))
    out.append("")
    for how, added, ok in ttfe_verdicts:
        out.append(
            f"{bullet}{how}: llmtap adds {added:+.2f} ms (p50) to the first event over bare mitmproxy "
            f"(target <= {TARGET_TTFE_MS:g} ms): {'met' if ok else 'NOT met'}"
        )
    out.append("")
    out.append(
        f"Event gaps: streams of {args.events} events {args.interval_ms:g} ms apart; "
        "conns x streams = connections at once x streams per connection."
    )
    out.append("")
    out.append(table(header, rows, args.markdown))
    out.append("")
    for how, conns, streams, d50, d99, ok in verdicts:
        out.append(
            f"{bullet}{how}, {conns} x {streams}: llmtap vs bare gap p50 {d50:+.2f} ms "
            f"(target within {TARGET_GAP_P50_MS:g}), p99 {d99:+.2f} ms (target <= +{TARGET_GAP_P99_MS:g}): "
            f"{'met' if ok else 'NOT met'}"
        )
    out.append("")
    same = "identical" if len(hashes) == 1 else f"NOT identical ({len(hashes)} variants)"
    out.append(f"{bullet}Bytes received by the client: {same} across all paths.")
    out.append(f"{bullet}llmtap: {llmtap_streams} streams sent through it; {recorded}.")
    out.append(
        f"{bullet}Gaps are between the upstream's timed events (the final [DONE] rides with the last "
        f"one); {elapsed:.0f} s in all."
    )
    print("\n".join(out))


def stored_streams(data) -> str:
    from collector.storage.database import read_connection

    try:
        with read_connection(data / "llmtap.duckdb") as con:
            n, with_usage, provider = con.execute(
                "SELECT count(*), count(output_tokens), count(*) FILTER (WHERE usage_source = 'provider') "
                "FROM llm_calls WHERE stream"
            ).fetchone()
    except Exception as exc:  # the figures above stand on their own
        return f"could not read the store ({exc})"
    return f"{n} streamed calls stored, {with_usage} with output tokens, {provider} with provider usage"


if __name__ == "__main__":
    main()
