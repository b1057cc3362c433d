"""Sustained load, kill -9, and memory: does llmtap keep every call, and its memory flat?

    uv run python bench/durability.py [--markdown] [--duration S]

Through the real ``llmtap proxy`` (capture=full unless said) and a fast local upstream
whose every chat completion carries a unique id, with an ``HTTPS_PROXY``-style client
(CONNECT + TLS, 8 keep-alive connections, its own process):

1. **Sustained load** for ``--duration`` seconds (default 100): every response id the client
   fully received must be in the store exactly once, and nothing else (rows = responses).
   The proxy's resident memory (VmRSS from /proc, its spool loader child process included)
   is sampled every second; the growth rate over the run's second half (median RSS of its
   last fifth against the middle fifth) is extended linearly to 100,000 calls (the number
   of calls actually made is stated).
2. **100 MB stream, capture=full**: one streamed chat completion of ~100 MB (1,600 SSE
   events of 64 KiB) through the same proxy; RSS before, peak (sampled every 20 ms while
   streaming and while the row is stored), and after.
   ``full`` keeps at most 8 MiB of a body, which the stored row must show.
3. **kill -9 mid-run**: load again; the proxy is killed with SIGKILL halfway and restarted
   on the same port and data directory while the client keeps retrying; after a clean
   stop every response the client fully received must be stored exactly once.
4. **100 MB stream, capture=metadata** (config file ``capture = "metadata"``) on a fresh
   proxy, after a short warm-up load.

Target: resident memory grows by less than 50 MB (after 100k calls; across a 100 MB stream).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import threading
import time
from pathlib import Path

from _common import (
    Bench,
    Proc,
    ca_bundle,
    check_quiet,
    finish_client,
    log,
    machine_line,
    rss,
    run_load,
    run_streams,
    start_load,
    table,
)

MB = 2**20
TARGET_GROWTH_MB = 50
STREAM_EVENTS = 1600
STREAM_EVENT_BYTES = 65536
CONNS = 8


def store_ids(db: Path) -> collections.Counter[str]:
    from collector.storage.database import read_connection

    with read_connection(db) as con:
        rows = con.execute("SELECT response_id, count(*) FROM llm_calls GROUP BY response_id").fetchall()
    return collections.Counter({rid: n for rid, n in rows})


def wait_for_rows(db: Path, want: set[str], timeout: float = 30.0) -> collections.Counter[str]:
    deadline = time.monotonic() + timeout
    while True:
        stored = store_ids(db)
        if want <= stored.keys() or time.monotonic() > deadline:
            return stored
        time.sleep(0.5)


def read_ids(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(rss(self.pid))
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


def idle_rss(pid: int, timeout: float = 15.0) -> int:
    """RSS of a freshly started proxy once it is steady (two samples a second apart within
    0.5 MB): its spool loader loads the price catalogue and opens the store as it starts."""
    deadline = time.monotonic() + timeout
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = rss(pid)
        if abs(now - last) < MB // 2:
            return now
        last = now
    return last


def settle_rss(pid: int, seconds: float = 2.0) -> int:
    """RSS after the ingester had time to load what is pending."""
    time.sleep(seconds)
    return rss(pid)


def big_stream(proxy: Proc, bundle: Path) -> dict:
    """One ~100 MB streamed call through ``proxy``; RSS before, peak during, after.

    The peak is the largest sum of the proxy's and its loader child's RSS, sampled every
    20 ms through the stream and the settling after it (when the loader stores the row):
    the two processes peak at different moments, so adding their VmHWM would overstate it."""
    before = settle_rss(proxy.pid, 1.0)
    started = time.monotonic()
    with RssSampler(proxy.pid) as sampler:
        r = run_streams(
            "https",
            proxy.port,
            1,
            1,
            ca=bundle,
            events=STREAM_EVENTS,
            interval_ms=0,
            event_bytes=STREAM_EVENT_BYTES,
            keep_times=False,
        )
        seconds = time.monotonic() - started
        after = settle_rss(proxy.pid)
    return {
        "bytes": r["bytes"],
        "seconds": seconds,
        "before": before,
        "peak": sampler.peak,
        "after": after,
    }


def stored_body_sizes(db: Path) -> tuple[int | None, str | None]:
    """Stored response body length and capture mode of the largest streamed call."""
    from collector.storage.database import read_connection

    with read_connection(db) as con:
        row = con.execute(
            "SELECT length(b.response_body), b.capture_mode FROM llm_calls c "
            "LEFT JOIN call_bodies b USING (call_id) WHERE c.stream ORDER BY c.latency_ms DESC LIMIT 1"
        ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def median(values: list[int]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def sustained(bench: Bench, proxy: Proc, bundle: Path, duration: float, db: Path) -> dict:
    ids_file = bench.tmp / "ids-sustained.txt"
    start_rss = idle_rss(proxy.pid)
    samples: list[tuple[int, int]] = []  # (calls so far, RSS), once a second
    client = start_load("https", proxy.port, CONNS, duration, 0.0, ca=bundle, ids_out=ids_file, progress=True)
    assert client.stderr is not None
    for line in client.stderr:
        if line.startswith("progress "):
            samples.append((int(line.split()[1]), rss(proxy.pid)))
    client.stderr = None  # read to the end above
    result = finish_client(client, 60)
    load_end = time.monotonic()
    received = read_ids(ids_file)
    received_set = set(received)
    stored = wait_for_rows(db, received_set)
    visible_s = time.monotonic() - load_end
    end_rss = settle_rss(proxy.pid)
    calls = len(received)

    def rss_near(share: float) -> tuple[int, int]:
        return min(samples, key=lambda p: abs(p[0] - calls * share)) if samples else (0, end_rss)

    # Growth in the second half of the run, from medians (the ingester's DuckDB batches make
    # short spikes that a least-squares fit would follow).
    mid = [rss for n, rss in samples if 0.4 * calls <= n <= 0.6 * calls]
    last = [rss for n, rss in samples if n >= 0.8 * calls]
    mid_calls = median([n for n, _ in samples if 0.4 * calls <= n <= 0.6 * calls])
    last_calls = median([n for n, _ in samples if n >= 0.8 * calls])
    per_call = (median(last) - median(mid)) / (last_calls - mid_calls) if last_calls > mid_calls else 0.0
    return {
        "calls": calls,
        "rps": calls / duration,
        "errors": result["errors"],
        "stored_rows": sum(stored.values()),
        "missing": sum(1 for rid in received_set if rid not in stored),
        "extra": sum(n for rid, n in stored.items() if rid not in received_set),
        "dupes": sum(1 for rid in received_set if stored.get(rid, 0) > 1),
        "visible_s": visible_s,
        "start": start_rss,
        "trajectory": [rss_near(share) for share in (0.1, 0.25, 0.5, 0.75)],
        "end": end_rss,
        "per_call": per_call,
    }


def kill_restart(bench: Bench, proxy: Proc, bundle: Path, db: Path, up_url: str, duration: float) -> dict:
    ids_file = bench.tmp / "ids-kill.txt"
    before = store_ids(db)
    client = start_load("https", proxy.port, CONNS, duration, 0.0, ca=bundle, ids_out=ids_file)
    time.sleep(0.2 + duration / 2)
    proxy.kill9()
    killed_at = time.monotonic()
    restarted = bench.llmtap(proxy_data_dir(proxy), up_url, port=proxy.port)
    restart_s = time.monotonic() - killed_at
    result = finish_client(client, duration + 60)
    code = restarted.stop()
    received = set(read_ids(ids_file))
    stored = store_ids(db)
    new = stored - before
    return {
        "received": len(received),
        "errors": result["errors"],
        "missing": sum(1 for rid in received if stored.get(rid, 0) == 0),
        "dupes": sum(1 for rid in received if stored.get(rid, 0) > 1),
        "unacked": sum(n for rid, n in new.items() if rid not in received),
        "restart_s": restart_s,
        "exit": code,
        "spool_left": len(list((proxy_data_dir(proxy) / "spool").glob("*.jsonl"))),
    }


def proxy_data_dir(proxy: Proc) -> Path:
    args = proxy.popen.args
    return Path(args[args.index("--data-dir") + 1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown")
    parser.add_argument("--duration", type=float, default=100.0, help="sustained load seconds (default 100)")
    parser.add_argument("--kill-duration", type=float, default=12.0, help="kill -9 run seconds (default 12)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    args = parser.parse_args()
    started = time.monotonic()
    quiet = check_quiet()
    with Bench(keep=args.keep) as bench:
        data = bench.tmp / "data"
        db = data / "llmtap.duckdb"
        bundle = ca_bundle(data)
        upstream = bench.upstream()
        up_url = f"http://127.0.0.1:{upstream.port}"
        proxy = bench.llmtap(data, up_url)
        log(f"1. sustained load, {args.duration:g} s")
        load = sustained(bench, proxy, bundle, args.duration, db)
        log("2. 100 MB stream, capture=full")
        full = big_stream(proxy, bundle)
        full_body = stored_body_sizes(db)
        log(f"3. kill -9 mid-run, {args.kill_duration:g} s")
        kill = kill_restart(bench, proxy, bundle, db, up_url, args.kill_duration)
        log("4. 100 MB stream, capture=metadata")
        meta_data = bench.tmp / "data-metadata"
        shutil.copytree(data / "ca", meta_data / "ca")  # the same CA, so the client trusts both
        meta_proxy = bench.llmtap(meta_data, up_url, config='capture = "metadata"\n')
        meta_start = idle_rss(meta_proxy.pid)
        warm = run_load("https", meta_proxy.port, CONNS, 5.0, 0.0, ca=bundle)
        if warm["errors"]:
            log(f"warning: {warm['errors']} client errors in the warm-up load")
        meta = big_stream(meta_proxy, bundle)
        meta_body = stored_body_sizes(meta_data / "llmtap.duckdb")
        meta_proxy.stop()
    elapsed = time.monotonic() - started
    print(render(args, load, full, full_body, kill, meta, meta_start, meta_body, elapsed, quiet))


def render(args, load, full, full_body, kill, meta, meta_start, meta_body, elapsed, quiet) -> str:
    md = args.markdown
    bullet = "- " if md else ""

    def mb(x: float) -> str:
        return f"{x / MB:.1f}"

    out = [f"{'Machine' if md else 'machine'}: {machine_line()}; {quiet}", ""]
    rows_ok = load["missing"] == 0 and load["extra"] == 0 and load["dupes"] == 0
    out.append(f"{'**1. Sustained load**' if md else '1. sustained load'}")
    out.append("")
    out.append(
        table(
            ("calls received", "req/s", "client errors", "rows stored", "missing", "extra", "duplicated"),
            [
                (
                    load["calls"],
                    f"{load['rps']:.0f}",
                    load["errors"],
                    load["stored_rows"],
                    load["missing"],
                    load["extra"],
                    load["dupes"],
                )
            ],
            md,
        )
    )
    out.append("")
    out.append(
        f"{bullet}rows stored = responses received: {'yes' if rows_ok else 'NO'} (all rows visible to a "
        f"reader at the first check, {load['visible_s']:.1f} s after the client finished)"
        if load["visible_s"] < 0.5
        else f"{bullet}rows stored = responses received: {'yes' if rows_ok else 'NO'} (all visible to a "
        f"reader {load['visible_s']:.1f} s after the client finished)"
    )
    remaining = max(0, 100_000 - load["calls"])
    projected = load["end"] + load["per_call"] * remaining
    out.append("")
    rss_rows = [("at start (idle)", mb(load["start"]))]
    rss_rows += [(f"after {n:,} calls", mb(rss)) for n, rss in load["trajectory"]]
    rss_rows.append((f"after {load['calls']:,} calls (end of run, measured)", mb(load["end"])))
    rss_rows.append(
        ("growth per 1,000 calls over the run's second half", f"{load['per_call'] * 1000 / MB:+.3f}")
    )
    rss_rows.append(("after 100,000 calls (extrapolated from that)", mb(projected)))
    out.append(table(("proxy RSS", "MB"), rss_rows, md))
    out.append("")
    growth = projected - load["start"]
    ok = growth / MB < TARGET_GROWTH_MB
    out.append(
        f"{bullet}{load['calls']:,} calls were made in {args.duration:g} s (not 100,000); the 100k figure "
        f"extends the second half's growth rate linearly. Growth from idle start to 100k calls: about "
        f"{growth / MB:.1f} MB (target < {TARGET_GROWTH_MB} MB): {'met' if ok else 'NOT met'}"
    )
    out.append("")
    out.append(f"{'**2 and 4. One ~100 MB streamed response**' if md else '2 and 4. one ~100 MB stream'}")
    out.append("")
    rows = []
    verdicts = []
    for name, s, body in (("full", full, full_body), ("metadata", meta, meta_body)):
        growth = s["after"] - s["before"]
        verdicts.append((name, growth, s["peak"] - s["before"]))
        rows.append(
            (
                name,
                mb(s["bytes"]),
                f"{s['bytes'] / MB / s['seconds']:.0f}",
                mb(s["before"]),
                mb(s["peak"]),
                mb(s["after"]),
                f"{growth / MB:+.1f}",
                "none" if body[0] is None else f"{body[0] / MB:.2f} MB",
            )
        )
    header = (
        "capture",
        "MB streamed",
        "MB/s",
        "RSS before",
        "RSS peak",
        "RSS after",
        "growth MB",
        "body stored",
    )
    out.append(table(header, rows, md))
    out.append("")
    for name, growth, peak in verdicts:
        ok = growth / MB < TARGET_GROWTH_MB and peak / MB < TARGET_GROWTH_MB
        out.append(
            f"{bullet}capture={name}: RSS {growth / MB:+.1f} MB after, {peak / MB:+.1f} MB at peak "
            f"(target < {TARGET_GROWTH_MB} MB): {'met' if ok else 'NOT met'}"
        )
    out.append(
        f"{bullet}metadata proxy RSS at start: {mb(meta_start)} MB (then 5 s of load before the stream)"
    )
    out.append("")
    out.append(f"{'**3. kill -9 mid-run and restart**' if md else '3. kill -9 mid-run'}")
    out.append("")
    out.append(
        table(
            (
                "responses received",
                "missing from store",
                "stored twice",
                "stored, not received (in flight at kill)",
                "restart s",
                "clean stop exit",
                "spool files left",
            ),
            [
                (
                    kill["received"],
                    kill["missing"],
                    kill["dupes"],
                    kill["unacked"],
                    f"{kill['restart_s']:.1f}",
                    kill["exit"],
                    kill["spool_left"],
                )
            ],
            md,
        )
    )
    out.append("")
    ok = kill["missing"] == 0 and kill["dupes"] == 0
    out.append(f"{bullet}no completed call missing or doubled: {'met' if ok else 'NOT met'}")
    out.append(f"{bullet}{elapsed:.0f} s in all.")
    return "\n".join(out)


if __name__ == "__main__":
    main()
