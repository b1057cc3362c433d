"""What llmtap adds to a call, over bare mitmproxy doing the same proxying.

    uv run python bench/overhead.py [--markdown] [--duration S] [--rounds N]
    uv run --with py-spy python bench/overhead.py --profile 15   # plus where llmtap's time goes
    uv run python bench/overhead.py --metrics    # llmtap with --metrics-port, scraped every second
    uv run python bench/overhead.py --fleet private   # llmtap shipping to a PostgreSQL fleet store

One small OpenAI chat completion (JSON with usage, not streamed) is sent over keep-alive
connections to a fast local upstream (bench/_common.py), measured three ways:

* ``direct``: to the upstream itself (plain TCP, or TLS for the HTTPS rows): the load
  client's own ceiling on this machine;
* ``bare mitmproxy``: mitmproxy 12 with llmtap's master, options (allow_hosts, lazy
  connection strategy, CA dir) and ``--upstream`` rewrite, but none of its recording addons;
* ``llmtap``: the real ``llmtap proxy`` (recording, pricing, spans, spool and DuckDB
  ingester, capture=full) with ``--upstream api.openai.com=http://127.0.0.1:PORT``.

Two client styles: ``reverse`` (plain HTTP to the proxy as if it were the API:
``POST /v1/chat/completions``, ``Host: api.openai.com``) and ``https`` (``CONNECT
api.openai.com:443`` then TLS trusting llmtap's CA bundle, as an ``HTTPS_PROXY`` client).
The client runs in its own process. Bare and llmtap are measured in alternating rounds in
the same run; latencies of all rounds are pooled. ``proxy CPU`` is the proxy process's CPU
time (all threads and child processes, from /proc) per request handled, warm-up included;
``event loop`` is its main thread's alone: mitmproxy's one event loop, whose core bounds
the proxy's throughput.

Each case with several connections runs twice: back to back (both proxies CPU-bound, so
p50 is connections / throughput and only the throughput ratio says something), then paced
at half of what bare mitmproxy managed back to back, offered to both proxies alike: the
latency a call gets below saturation.

With ``--metrics`` llmtap runs with ``--metrics-port`` and a scraper in this process fetches
``/metrics`` every second throughout (Prometheus at a short scrape interval), so each scrape
queries the growing store on the proxy's metrics thread while the load runs; the summary
says how many scrapes answered and how long they took.

Targets: llmtap adds at most 0.3 ms to p50 over bare mitmproxy and keeps >= 90% of its
requests per second.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from _common import (
    HOST,
    ROOT,
    Bench,
    ca_bundle,
    check_quiet,
    child_pids,
    free_port,
    log,
    machine_line,
    percentile,
    run_load,
    start_load,
    stored_rows,
    table,
)

TARGET_P50_MS = 0.3
TARGET_THROUGHPUT = 0.90
#: The paced runs offer this share of bare mitmproxy's closed-loop requests/s at the same
#: number of connections, to both proxies.
PACED_SHARE = 0.5


def verdict(how: str, conns: int, rate: float, added: float, ratio: float) -> str:
    """Which targets a case answers. One connection: both. Several back to back: both proxies
    are CPU-bound, so p50 is conns / throughput (Little's law) and says nothing the
    throughput does not; the throughput target. Several, paced below saturation: the p50 target."""
    p50 = f"adds {added:+.2f} ms p50 (target <= {TARGET_P50_MS})"
    kept = f"keeps {ratio:.0%} of bare req/s (target >= {TARGET_THROUGHPUT:.0%})"
    p50_ok, kept_ok = added <= TARGET_P50_MS, ratio >= TARGET_THROUGHPUT
    label = f"{conns} conn"
    if conns == 1:
        what, ok = f"{p50} and {kept}", p50_ok and kept_ok
    elif rate:
        what, ok = p50, p50_ok
        label += f" paced at {rate * conns:.0f} req/s"
    else:
        what, ok = f"{kept} (p50 {added:+.2f} ms: CPU-bound, p50 = {conns} / throughput)", kept_ok
    return f"{how}, {label}: llmtap {what}: {'met' if ok else 'NOT met'}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` and of its live child processes (llmtap's spool
    loader runs in one)."""
    ticks = 0
    for proc in (str(pid), *child_pids(pid)):
        with contextlib.suppress(FileNotFoundError):  # a child may exit meanwhile
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def loop_cpu_seconds(pid: int) -> float:
    """utime + stime of the main thread of ``pid``: mitmproxy's event loop, whose one core
    bounds the proxy's throughput."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    how: str, port: int, conns: int, args, bundle: Path, lat_file: Path, pid: int | None, rate: float = 0.0
) -> dict:
    before = (cpu_seconds(pid), loop_cpu_seconds(pid)) if pid else (0.0, 0.0)
    result = run_load(how, port, conns, args.duration, args.warmup, ca=bundle, lat_out=lat_file, rate=rate)
    result["cpu_s"] = (cpu_seconds(pid) - before[0]) if pid else None
    result["loop_cpu_s"] = (loop_cpu_seconds(pid) - before[1]) if pid else None
    result["lat"] = [float(x) / 1000 for x in lat_file.read_text().split()]  # ms
    return result


def pooled(runs: list[dict], duration: float) -> dict:
    lat = sorted(x for r in runs for x in r["lat"])
    total = sum(r["total"] for r in runs)
    cpu = [r["cpu_s"] for r in runs if r["cpu_s"] is not None]
    loop = [r["loop_cpu_s"] for r in runs if r["loop_cpu_s"] is not None]
    return {
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "rps": len(lat) / (duration * len(runs)),
        "cpu_us": (sum(cpu) / total * 1e6) if cpu and total else None,
        "loop_us": (sum(loop) / total * 1e6) if loop and total else None,
        "errors": sum(r["errors"] for r in runs),
        "n": len(lat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per proxy and case (default 3)")
    parser.add_argument("--conns", default="1,8", help="concurrent connections (default 1,8)")
    parser.add_argument("--modes", default="reverse,https", help="client styles (default reverse,https)")
    parser.add_argument(
        "--profile",
        type=float,
        metavar="S",
        default=0,
        help="then profile both proxies with py-spy for S seconds under https load (needs py-spy)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, profiles)")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="run llmtap with --metrics-port and scrape /metrics every second throughout",
    )
    parser.add_argument(
        "--fleet",
        metavar="URL",
        help="run llmtap with [fleet] shipping to this PostgreSQL URL ('private': a private server,"
        " as the tests start one)",
    )
    args = parser.parse_args()
    conns_list = [int(c) for c in args.conns.split(",")]
    modes = args.modes.split(",")
    if args.profile and not shutil.which("py-spy"):
        parser.error("--profile needs py-spy: uv run --with py-spy python bench/overhead.py --profile 15")

    rows = []
    verdicts = []
    started = time.monotonic()
    quiet = check_quiet()
    through_llmtap = 0
    with Bench(keep=args.keep) as bench, contextlib.ExitStack() as stack:
        data = bench.tmp / "data"
        bundle = ca_bundle(data)
        upstream = bench.upstream(tls_for=data / "ca")
        up_url = f"http://127.0.0.1:{upstream.port}"
        scraper: Scraper | None = None
        extra: list[str] = []
        if args.metrics:
            metrics_port = free_port()
            extra = ["--metrics-port", str(metrics_port)]
        fleet = _fleet_config(args.fleet, stack) if args.fleet else None
        llmtap = bench.llmtap(data, up_url, config=fleet, extra_args=extra)
        if args.metrics:
            scraper = Scraper(f"http://127.0.0.1:{metrics_port}/metrics").start()
        bare = bench.bare(data / "ca", up_url)
        proxies = {"bare mitmproxy": bare, "llmtap": llmtap}
        log("warming up both proxies")
        for proxy in proxies.values():
            for how in modes:
                warm = run_load(how, proxy.port, 2, 0.5, 0.5, ca=bundle)
                through_llmtap += warm["total"] if proxy is llmtap else 0
        lat_file = bench.tmp / "lat.txt"
        for how in modes:
            direct_how, direct_port = ("direct", upstream.port)
            if how == "https":
                direct_how, direct_port = ("direct-tls", upstream.extra["tls_port"])
            cases = [(conns, 0.0) for conns in conns_list]
            while cases:
                conns, rate = cases.pop(0)
                paced = f" paced, {rate * conns:.0f} req/s" if rate else ""
                log(f"{how}, {conns} connection(s){paced}")
                runs: dict[str, list[dict]] = collections.defaultdict(list)
                if not rate:
                    runs["direct"].append(
                        measure(direct_how, direct_port, conns, args, bundle, lat_file, None)
                    )
                for r in range(args.rounds):
                    order = list(proxies) if r % 2 == 0 else list(reversed(proxies))
                    for name in order:
                        proc = proxies[name]
                        run = measure(how, proc.port, conns, args, bundle, lat_file, proc.pid, rate)
                        runs[name].append(run)
                        through_llmtap += run["total"] if proc is llmtap else 0
                stats = {name: pooled(rs, args.duration) for name, rs in runs.items()}
                base, ours = stats["bare mitmproxy"], stats["llmtap"]
                added = ours["p50"] - base["p50"]
                ratio = ours["rps"] / base["rps"]
                if conns > 1 and not rate:
                    # Then at PACED_SHARE of what bare mitmproxy managed: latency below saturation.
                    cases.insert(0, (conns, PACED_SHARE * base["rps"] / conns))
                verdicts.append(verdict(how, conns, rate, added, ratio))
                for name, st in stats.items():
                    vs = ""
                    if name == "llmtap":
                        per_round = [
                            o["count"] / b["count"]
                            for o, b in zip(runs["llmtap"], runs["bare mitmproxy"], strict=True)
                            if b["count"]
                        ]
                        spread = (
                            f" (rounds {min(per_round):.0%}-{max(per_round):.0%})"
                            if len(per_round) > 1 and not rate
                            else ""
                        )
                        vs = f"{added:+.2f} ms p50" + ("" if rate else f", {ratio:.0%} req/s{spread}")
                    rows.append(
                        (
                            how if how != "https" else "https (CONNECT+TLS)",
                            f"{conns}{paced}",
                            ("direct to upstream" + (" (TLS)" if how == "https" else ""))
                            if name == "direct"
                            else name,
                            f"{st['p50']:.2f}",
                            f"{st['p99']:.2f}",
                            f"{st['rps']:.0f}",
                            f"{st['cpu_us']:.0f}" if st["cpu_us"] is not None else "-",
                            f"{st['loop_us']:.0f}" if st["loop_us"] is not None else "-",
                            st["errors"],
                            vs,
                        )
                    )
        scraped = scraper.stop() if scraper is not None else ""
        stored = stored_rows(data / "llmtap.duckdb", through_llmtap)
        elapsed = time.monotonic() - started
        profile_text = profile(bench, args, llmtap, bare, bundle) if args.profile else ""

    header = (
        "client",
        "conns",
        "path",
        "p50 ms",
        "p99 ms",
        "req/s",
        "proxy CPU us/req",
        "event loop us/req",
        "errors",
        "llmtap vs bare",
    )
    out = []
    out.append(f"{'Machine' if args.markdown else 'machine'}: {machine_line()}; {quiet}")
    out.append("")
    out.append(table(header, rows, args.markdown))
    out.append("")
    for line in verdicts:
        out.append(f"{'- ' if args.markdown else ''}{line}")
    out.append("")
    out.append(
        f"llmtap recorded {stored:,} rows for the {through_llmtap:,} calls sent through it "
        f"(warm-ups included): {'all recorded' if stored == through_llmtap else 'MISMATCH'}."
    )
    if scraped:
        out.append(scraped)
    out.append(
        f"{args.rounds} rounds x {args.duration:g} s measured per proxy and case "
        f"(+{args.warmup:g} s warm-up each); {elapsed:.0f} s in all."
    )
    if profile_text:
        out += ["", profile_text]
    print("\n".join(out))


# -- fleet and metrics ----------------------------------------------------------------------


def _fleet_config(url: str, stack: contextlib.ExitStack) -> str:
    """A config shipping to ``url``, or to a private PostgreSQL server (``private``) that
    ``stack`` stops."""
    if url == "private":
        sys.path.insert(0, str(ROOT))  # the tests' private server
        from tests.pgserver import PgServer

        server = PgServer().init()
        stack.callback(server.stop)
        url = server.url(server.create_database())
    return f'[fleet]\nurl = "{url}"\nnode = "bench"\n'


class Scraper:
    """Fetches the metrics endpoint every ``interval`` seconds, as Prometheus would, and keeps
    each answer's status, time and the store query time it reports."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        self.url = url
        self.interval = interval
        self.results: list[tuple[int, float, float | None]] = []  # status, seconds, query seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def start(self) -> Scraper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            query_s = None
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    status = response.status
                    body = response.read()
                # Only the last line (llmtap's own gauge): this process shares the machine with
                # the proxies, and parsing every line is Prometheus' cost, not llmtap's.
                name, _, value = body.rstrip().rpartition(b"\n")[2].partition(b" ")
                if name == b"llmtap_metrics_query_seconds":
                    query_s = float(value)
            except Exception as exc:
                status = getattr(exc, "code", 0)
            self.results.append((status, time.monotonic() - started, query_s))

    def stop(self) -> str:
        """Stop scraping; one line on what the scrapes saw."""
        self._stop.set()
        self._thread.join()
        ok = [r for r in self.results if r[0] == 200]
        seconds = sorted(r[1] * 1000 for r in ok)
        queries = sorted({r[2] * 1000 for r in ok if r[2] is not None})
        if not seconds:
            return f"metrics: {len(self.results)} scrapes, none answered 200"
        return (
            f"metrics on: /metrics scraped every {self.interval:g} s, {len(ok)} of {len(self.results)} "
            f"answered 200; answer p50 {percentile(seconds, 50):.1f} ms, max {seconds[-1]:.1f} ms; "
            f"store query (each answer is reused for at least 1 s) p50 {percentile(queries, 50):.1f} ms, "
            f"max {queries[-1]:.1f} ms"
        )


# -- profile ------------------------------------------------------------------------------

_FRAME = re.compile(r"^(.*) \((.*):\d+\)$")


def profile(bench: Bench, args, llmtap, bare, bundle: Path) -> str:
    """py-spy both proxies under the same https, 8-connection load; summarise where time goes."""
    summaries = {}
    for name, proc in (("llmtap", llmtap), ("bare mitmproxy", bare)):
        out = bench.tmp / f"profile-{proc.name}.txt"
        log(f"profiling {name} for {args.profile:g} s")
        cmd = ["py-spy", "record", "-p", str(proc.pid), "-d", f"{args.profile:g}", "-r", "100"]
        cmd += ["-f", "raw", "--threads", "-o", str(out)]
        spy = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        load = start_load("https", proc.port, 8, args.profile, 0.0, ca=bundle)
        spy.wait(args.profile + 60)
        load.wait(args.profile + 60)
        summaries[name] = summarize_profile(out)
    text = render_profile(summaries, args.markdown)
    try:
        hooks = hook_timings(bench.tmp)
    except Exception as exc:  # internals it leans on may have changed
        return text + f"\n(in-process hook timings unavailable: {exc!r})"
    total = sum(us for name, us in hooks if not name.startswith(("UpstreamRewrite", "_Ready")))
    rows = [(name, f"{us:.1f}") for name, us in hooks if us >= 0.05]
    rows.append(("total, without UpstreamRewrite (bare mitmproxy has it too)", f"{total:.1f}"))
    return (
        text
        + "\nIn-process time of each llmtap hook for the same request and response "
        + "(no sockets, no mitmproxy dispatch):\n\n"
        + table(("addon.hook", "us per call"), rows, args.markdown)
    )


def hook_timings(tmp: Path, n: int = 3000) -> list[tuple[str, float]]:
    """Microseconds per call of each hook of the addons ``llmtap proxy`` installs, run in this
    process on the benchmark's request and response (no sockets, no mitmproxy dispatch)."""
    import asyncio
    import inspect

    from _common import _JSON_BODY, CHAT_BODY, CHAT_PATH, SDK_HEADERS
    from mitmproxy import http
    from mitmproxy.test import tflow

    import collector.proxy.server as cp
    from collector.settings.config import load_settings

    addons: list = []

    class FakeAddons:
        def add(self, *more) -> None:  # llmtap's addons come as one Pipeline: time each stage
            for addon in more:
                addons.extend(getattr(addon, "stages", (addon,)))

        def get(self, name: str):  # serve() filters the log of mitmproxy's errorcheck addon
            import logging
            import types

            return types.SimpleNamespace(logger=logging.getLogger(f"bench.{name}"))

    class FakeMaster:  # stands in for DumpMaster so that serve() only builds its addons
        def __init__(self, opts, **_kw) -> None:
            opts.add_option("connection_strategy", str, "eager", "")
            self.addons = FakeAddons()

        async def run(self) -> None:
            return None

        def shutdown(self) -> None:
            pass

    settings = load_settings(data_dir=str(tmp / "hooks"), upstream_flags=[f"{HOST}=http://127.0.0.1:9"])
    proxy = cp.LlmtapProxy(settings)
    real, cp.DumpMaster = cp.DumpMaster, FakeMaster
    try:
        asyncio.run(proxy.serve())
    finally:
        cp.DumpMaster = real
    headers = [tuple(x.encode() for x in line.split(": ", 1)) for line in SDK_HEADERS.split("\r\n") if line]
    response_headers = [(b"content-type", b"application/json"), (b"x-request-id", b"req_1")]

    def new_flow() -> http.HTTPFlow:
        flow = tflow.tflow()
        flow.request = http.Request.make("POST", f"https://{HOST}{CHAT_PATH}", CHAT_BODY, headers)
        flow.request.timestamp_start = time.time()
        flow.response = None
        return flow

    timings: dict[str, float] = collections.defaultdict(float)
    loop = asyncio.new_event_loop()
    for i in range(n + 200):  # the first 200 warm caches up and are not counted
        flow = new_flow()
        for hook in ("requestheaders", "request", "responseheaders", "response"):
            if hook == "responseheaders":
                flow.response = http.Response.make(200, _JSON_BODY % b"%d" % i, response_headers)
                flow.response.timestamp_start = flow.response.timestamp_end = time.time()
            for addon in addons:
                method = getattr(addon, hook, None)
                if method is None:
                    continue
                t0 = time.perf_counter()
                result = method(flow)
                if inspect.isawaitable(result):  # an async hook (routing's): run it to its end
                    loop.run_until_complete(result)
                if i >= 200:
                    timings[f"{type(addon).__name__}.{hook}"] += time.perf_counter() - t0
    loop.close()
    proxy.close(5)
    rows = [(name, total / n * 1e6) for name, total in timings.items()]
    return sorted(rows, key=lambda r: -r[1])


def summarize_profile(path: Path) -> dict:
    threads: collections.Counter[str] = collections.Counter()
    outer: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaf_in_llmtap: collections.Counter[str] = collections.Counter()
    main = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        threads[thread] += n
        if thread != "MainThread":
            continue
        main += n
        parsed = [m.groups() for f in frames[1:] if (m := _FRAME.match(f))]
        first = next((i for i, (_, file) in enumerate(parsed) if file.startswith("collector/")), None)
        if first is None:
            continue
        fn, file = parsed[first]
        outer[f"{fn} ({file})"] += n
        seen = set()
        for fn, file in parsed[first:]:
            key = f"{fn} ({file})"
            if file.startswith("collector/") and key not in seen:
                seen.add(key)
                inclusive[key] += n
        # deepest frame: the actual cost, inside llmtap code or a library it calls
        leaf_fn, leaf_file = parsed[-1]
        leaf_in_llmtap[f"{leaf_fn} ({leaf_file})"] += n
    return {
        "threads": threads,
        "main": main,
        "outer": outer,
        "inclusive": inclusive,
        "leaf": leaf_in_llmtap,
    }


def render_profile(summaries: dict, markdown: bool) -> str:
    lines = []
    for name, s in summaries.items():
        total = sum(s["threads"].values())
        main = s["main"] or 1
        in_llmtap = sum(s["outer"].values())
        lines.append(
            f"{'### ' if markdown else ''}py-spy, {name}: {total} samples; "
            + ", ".join(f"{t} {n / total:.0%}" for t, n in s["threads"].most_common())
        )
        lines.append("")
        if name != "llmtap":
            continue
        lines.append(
            f"Event loop (MainThread): {in_llmtap / main:.1%} of its samples inside collector/ "
            f"(llmtap's addons), {1 - in_llmtap / main:.1%} in mitmproxy/asyncio/TLS."
        )
        lines.append("")
        rows = [
            (f"{n / main:.1%}", k + (" (also in bare)" if "collector/proxy/addons/upstream.py" in k else ""))
            for k, n in s["inclusive"].most_common(21)
            if "collector/trust/failopen.py" not in k
        ]
        lines.append(table(("share of event loop", "llmtap function (inclusive)"), rows, markdown))
        lines.append("")
        rows = [(f"{n / main:.1%}", k) for k, n in s["leaf"].most_common(15)]
        lines.append(table(("share of event loop", "deepest frame under llmtap code (self)"), rows, markdown))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
